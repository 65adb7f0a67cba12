//! Per-VM state that every root context of the VM and every stream share.

use std::cell::RefCell;
use std::rc::Rc;

use crate::ledger::Ledger;
use crate::shadow::Shadows;
use crate::tally::Tally;
use aviary_contract::hash::SplitMix64;

#[derive(Clone)]
pub struct Shared {
    pub rng: Rc<RefCell<SplitMix64>>,
    pub shadows: Rc<RefCell<Shadows>>,
    pub tally: Rc<RefCell<Tally>>,
    pub ledger: Rc<RefCell<Ledger>>,
}

impl Shared {
    /// A VM's state; `seed` (random per VM) seeds the generator and names the VM's ledger row.
    pub fn new(seed: u64) -> Shared {
        let tally = Rc::new(RefCell::new(Tally::default()));
        Shared {
            rng: Rc::new(RefCell::new(SplitMix64::new(seed))),
            shadows: Rc::new(RefCell::new(Shadows::new(tally.clone()))),
            tally,
            ledger: Rc::new(RefCell::new(Ledger::new(seed))),
        }
    }
}
