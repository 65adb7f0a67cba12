//! Metric names. Each stat name carries its labels as `.key.value` pairs, which the
//! `stats_tags` in `envoy/` turn into Prometheus labels (see README, "Metrics").
//! The rollout driver reads the same names, so they are defined once, here.

pub const REQUESTS: &str = "aviary_requests_total";
pub const RESPONSES: &str = "aviary_responses_total";
pub const DURATION: &str = "aviary_request_duration_ms";
pub const WEIGHT: &str = "aviary_weight_bps";
pub const CONFIG_DIGEST: &str = "aviary_config_digest";
pub const OVERRIDE_REJECTED: &str = "aviary_override_rejected_total";
pub const SCORE_BINS: &str = "aviary_score_bin_total";
pub const SCORE_SKIPPED: &str = "aviary_score_skipped_total";
pub const SHADOW_REQUESTS: &str = "aviary_shadow_requests_total";
pub const SHADOW_RESPONSES: &str = "aviary_shadow_responses_total";
pub const SHADOW_COMPARISONS: &str = "aviary_shadow_comparisons_total";
pub const SHADOW_UNCOMPARED: &str = "aviary_shadow_uncompared_total";
pub const SHADOW_SCORE_DELTA: &str = "aviary_shadow_score_delta_milli";
pub const SHADOW_LATENCY_DELTA: &str = "aviary_shadow_latency_delta_ms";

use std::marker::PhantomData;
use std::ops::{Index, IndexMut};

/// A metric label whose values are the variants of an enum, e.g. [`ResponseClass`].
pub trait Label: Copy + 'static {
    /// The label's key in a stat name.
    const KEY: &'static str;
    /// Every value, in `index` order.
    const VALUES: &'static [Self];
    /// Every value's label string, in `index` order.
    const NAMES: &'static [&'static str];
    fn index(self) -> usize;
    fn as_str(self) -> &'static str;
}

/// One `T` per value of the label `L` (e.g. a counter per response class), indexed by value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ByLabel<L, T> {
    values: Vec<T>,
    label: PhantomData<L>,
}

impl<L: Label, T> ByLabel<L, T> {
    pub fn from_fn(f: impl FnMut(L) -> T) -> Self {
        ByLabel {
            values: L::VALUES.iter().copied().map(f).collect(),
            label: PhantomData,
        }
    }

    /// Like `from_fn`, stopping at the first error.
    pub fn try_from_fn<E>(f: impl FnMut(L) -> Result<T, E>) -> Result<Self, E> {
        Ok(ByLabel {
            values: L::VALUES.iter().copied().map(f).collect::<Result<_, E>>()?,
            label: PhantomData,
        })
    }

    /// One value per label value, in `index` order; `None` if the count is not the label's.
    pub fn from_vec(values: Vec<T>) -> Option<Self> {
        (values.len() == L::VALUES.len()).then_some(ByLabel {
            values,
            label: PhantomData,
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = (L, &T)> {
        L::VALUES.iter().copied().zip(&self.values)
    }
}

impl<L: Label, T> Index<L> for ByLabel<L, T> {
    type Output = T;

    fn index(&self, label: L) -> &T {
        &self.values[label.index()]
    }
}

impl<L: Label, T> IndexMut<L> for ByLabel<L, T> {
    fn index_mut(&mut self, label: L) -> &mut T {
        &mut self.values[label.index()]
    }
}

/// Defines a metric label: an enum whose variants are the label's values, in metric-id order.
macro_rules! label {
    ($(#[$doc:meta])* $name:ident = $key:literal {
        $($(#[$vdoc:meta])* $variant:ident = $value:literal,)+
    }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// The label's key in a stat name.
            pub const KEY: &'static str = $key;
            /// Every value, in `index` order.
            pub const ALL: [$name; [$($value),+].len()] = [$($name::$variant),+];

            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $value,)+
                }
            }

            /// Position in `ALL`, for per-value metric id arrays.
            pub fn index(self) -> usize {
                self as usize
            }

            /// The value a label string names, if any.
            pub fn from_label(s: &str) -> Option<$name> {
                $name::ALL.into_iter().find(|v| v.as_str() == s)
            }
        }

        impl Label for $name {
            const KEY: &'static str = $key;
            const VALUES: &'static [$name] = &$name::ALL;
            const NAMES: &'static [&'static str] = &[$($value),+];

            fn index(self) -> usize {
                $name::index(self)
            }

            fn as_str(self) -> &'static str {
                $name::as_str(self)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

label! {
    /// `class` of a response counted in `aviary_responses_total`.
    ResponseClass = "class" {
        /// Status 100 to 199.
        Informational = "1xx",
        /// Status 200 to 299.
        Success = "2xx",
        /// Status 300 to 399.
        Redirection = "3xx",
        /// Status 400 to 499 from the upstream.
        ClientError = "4xx",
        /// Status 500 and above from the upstream.
        ServerError = "5xx",
        /// A reply Envoy generated with no upstream answer (connect failure, timeout).
        Local = "local",
        /// A stream that ended with no response at all.
        Reset = "reset",
    }
}

impl ResponseClass {
    /// The class of an upstream status.
    pub fn of_status(status: u16) -> ResponseClass {
        match status {
            100..=199 => ResponseClass::Informational,
            200..=299 => ResponseClass::Success,
            300..=399 => ResponseClass::Redirection,
            400..=499 => ResponseClass::ClientError,
            _ => ResponseClass::ServerError,
        }
    }

    /// Whether the rollout gates count this class as an error.
    pub fn is_error(self) -> bool {
        matches!(
            self,
            ResponseClass::ServerError | ResponseClass::Local | ResponseClass::Reset
        )
    }
}

label! {
    /// `reason` a request was routed as it was, in `aviary_requests_total`.
    DecisionReason = "reason" {
        /// The kill switch sent every request to one version.
        KillSwitch = "kill_switch",
        /// A trusted override header named the version.
        Override = "override",
        /// A segment rule matched.
        Rule = "rule",
        /// The weights, by the hash of the request's sticky key.
        Sticky = "sticky",
        /// The weights, at random (no sticky key).
        Random = "random",
    }
}

label! {
    /// `reason` a response's score was not binned, in `aviary_score_skipped_total`.
    ScoreSkipped = "reason" {
        /// The body is not JSON.
        NonJson = "non_json",
        /// The score pointer is absent or not a number.
        FieldMissing = "field_missing",
        /// The body is larger than the buffer limit.
        BodyTooLarge = "body_too_large",
    }
}

label! {
    /// `class` of a shadow's answer, in `aviary_shadow_responses_total`.
    ShadowClass = "class" {
        /// Status 100 to 199.
        Informational = "1xx",
        /// Status 200 to 299.
        Success = "2xx",
        /// Status 300 to 399.
        Redirection = "3xx",
        /// Status 400 to 499.
        ClientError = "4xx",
        /// Status 500 and above, except a timeout.
        ServerError = "5xx",
        /// The call ended with no headers.
        Reset = "reset",
        /// The call hit the shadow timeout.
        Timeout = "timeout",
    }
}

impl ShadowClass {
    /// The class of a shadow's status.
    pub fn of_status(status: u16) -> ShadowClass {
        match ResponseClass::of_status(status) {
            ResponseClass::Informational => ShadowClass::Informational,
            ResponseClass::Success => ShadowClass::Success,
            ResponseClass::Redirection => ShadowClass::Redirection,
            ResponseClass::ClientError => ShadowClass::ClientError,
            _ => ShadowClass::ServerError,
        }
    }
}

label! {
    /// `result` of comparing a shadow's answer with the primary's, in
    /// `aviary_shadow_comparisons_total`.
    Comparison = "result" {
        /// Both labels are equal.
        Agree = "agree",
        /// Both labels are present and differ.
        Disagree = "disagree",
        /// Compared by score only (a score pointer but no label pointer).
        Scored = "scored",
    }
}

label! {
    /// `reason` a mirrored request produced no comparison, in `aviary_shadow_uncompared_total`.
    Uncompared = "reason" {
        /// A body is not JSON.
        NonJson = "non_json",
        /// A configured pointer is absent (or a score is not a number).
        FieldMissing = "field_missing",
        /// A body is larger than `compare.maxBodyBytes`.
        BodyTooLarge = "body_too_large",
        /// The shadow answered with a non-2xx status or no headers.
        ShadowError = "shadow_error",
        /// The shadow call hit its timeout.
        Timeout = "timeout",
        /// `maxInFlight` mirrored requests were already pending, so this one was not sent.
        Capacity = "capacity",
        /// The primary failed, so there is nothing to compare against.
        PrimaryError = "primary_error",
        /// The host refused to dispatch the shadow call.
        DispatchFailed = "dispatch_failed",
        /// No answer came back long after the timeout; the slot was reclaimed.
        Expired = "expired",
        /// The copy was sent from a VM that died (crash, reload) before its outcome was known;
        /// a live VM counts it from the dead VM's ledger in shared data.
        VmLost = "vm_lost",
    }
}

label! {
    /// `direction` of a shadow's latency against the primary's, in
    /// `aviary_shadow_latency_delta_ms`.
    LatencyDirection = "direction" {
        /// The shadow took as long or longer.
        Slower = "slower",
        /// The shadow was faster.
        Faster = "faster",
    }
}

/// A stat name: `base` followed by `.key.value` for each label.
pub fn stat_name(base: &str, labels: &[(&str, &str)]) -> String {
    let mut s = String::with_capacity(base.len() + 48);
    s.push_str(base);
    for (k, v) in labels {
        s.push('.');
        s.push_str(k);
        s.push('.');
        s.push_str(v);
    }
    s
}

/// Formats a score bin's upper bound as its `bin` label; the implied last bin is `+Inf`.
pub fn bin_label(bound: Option<f64>) -> String {
    match bound {
        Some(b) => crate::units::fmt_decimal(b),
        None => "+Inf".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_in_index_order() {
        for (i, c) in ResponseClass::ALL.into_iter().enumerate() {
            assert_eq!(c.index(), i);
            assert_eq!(ResponseClass::from_label(c.as_str()), Some(c));
        }
        let names = Uncompared::ALL.map(Uncompared::as_str);
        assert_eq!(names[Uncompared::Capacity.index()], "capacity");
        assert_eq!(Uncompared::ALL.len(), 10);
        assert_eq!(ShadowClass::of_status(503), ShadowClass::ServerError);
        assert_eq!(ResponseClass::of_status(204).to_string(), "2xx");
    }

    #[test]
    fn by_label_is_indexed_by_value() {
        let mut counts: ByLabel<ResponseClass, u64> = ByLabel::from_fn(|_| 0);
        counts[ResponseClass::Reset] += 2;
        assert_eq!(counts[ResponseClass::Reset], 2);
        assert_eq!(counts.iter().count(), ResponseClass::ALL.len());
        let names = ByLabel::<Comparison, _>::try_from_fn(|c| Ok::<_, ()>(c.as_str()));
        assert_eq!(names.map(|n| n[Comparison::Scored]), Ok("scored"));
        let failed = ByLabel::<Comparison, u8>::try_from_fn(|c| match c {
            Comparison::Disagree => Err(c),
            _ => Ok(1),
        });
        assert_eq!(failed, Err(Comparison::Disagree));
        assert!(ByLabel::<Comparison, u8>::from_vec(vec![1, 2]).is_none());
        let v = ByLabel::<Comparison, u8>::from_vec(vec![1, 2, 3]);
        assert_eq!(v.map(|v| v[Comparison::Scored]), Some(3));
        assert_eq!(
            <Comparison as Label>::NAMES,
            Comparison::ALL.map(Comparison::as_str)
        );
    }

    #[test]
    fn error_classes() {
        let errors: Vec<&str> = ResponseClass::ALL
            .into_iter()
            .filter(|c| c.is_error())
            .map(ResponseClass::as_str)
            .collect();
        assert_eq!(errors, ["5xx", "local", "reset"]);
    }

    #[test]
    fn bin_labels() {
        assert_eq!(bin_label(Some(0.25)), "0.25");
        assert_eq!(bin_label(None), "+Inf");
    }
}
