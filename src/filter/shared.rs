//! Per-VM state that the root context and every stream share.

use std::cell::RefCell;
use std::rc::Rc;

use crate::shadow::Shadows;
use crate::tally::Tally;
use aviary_contract::hash::SplitMix64;

#[derive(Clone)]
pub struct Shared {
    pub rng: Rc<RefCell<SplitMix64>>,
    pub shadows: Rc<RefCell<Shadows>>,
    pub tally: Rc<RefCell<Tally>>,
}

impl Shared {
    pub fn new(seed: u64, tally: Rc<RefCell<Tally>>) -> Shared {
        Shared {
            rng: Rc::new(RefCell::new(SplitMix64::new(seed))),
            shadows: Rc::new(RefCell::new(Shadows::new(tally.clone()))),
            tally,
        }
    }
}
