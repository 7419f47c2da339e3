//! Version vectors: one counter per device that changed a file.
//!
//! Laws (property-tested below): `merge` is commutative, associative and idempotent;
//! `a ≤ merge(a, b)`; `compare` is antisymmetric (`a.compare(b)` is the mirror of
//! `b.compare(a)`). Zero counters are never stored, so equal vectors are equal maps.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::ids::DeviceId;

/// How two version vectors relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VvOrdering {
    /// Same history.
    Equal,
    /// Strictly older: every counter ≤, one <.
    Less,
    /// Strictly newer.
    Greater,
    /// Neither contains the other: concurrent edits.
    Concurrent,
}

impl VvOrdering {
    /// The relation seen from the other side.
    #[must_use]
    pub fn reverse(self) -> Self {
        match self {
            Self::Less => Self::Greater,
            Self::Greater => Self::Less,
            other => other,
        }
    }
}

/// A version vector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct VersionVector(BTreeMap<DeviceId, u64>);

impl VersionVector {
    /// The empty vector (no history).
    pub fn new() -> Self {
        Self::default()
    }

    /// True when no device has a counter.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The counter of `device` (0 when absent).
    pub fn get(&self, device: DeviceId) -> u64 {
        self.0.get(&device).copied().unwrap_or(0)
    }

    /// Sets the counter of `device`; 0 removes it.
    pub fn set(&mut self, device: DeviceId, counter: u64) {
        if counter == 0 {
            self.0.remove(&device);
        } else {
            self.0.insert(device, counter);
        }
    }

    /// Records one more change by `device`.
    pub fn increment(&mut self, device: DeviceId) {
        let c = self.0.entry(device).or_insert(0);
        *c = c.saturating_add(1);
    }

    /// A copy with one more change by `device`.
    #[must_use]
    pub fn incremented(&self, device: DeviceId) -> Self {
        let mut v = self.clone();
        v.increment(device);
        v
    }

    /// Pointwise maximum, in place.
    pub fn merge(&mut self, other: &Self) {
        for (&d, &c) in &other.0 {
            let e = self.0.entry(d).or_insert(0);
            *e = (*e).max(c);
        }
    }

    /// Pointwise maximum.
    #[must_use]
    pub fn merged(&self, other: &Self) -> Self {
        let mut v = self.clone();
        v.merge(other);
        v
    }

    /// How `self` relates to `other`.
    pub fn compare(&self, other: &Self) -> VvOrdering {
        let mut less = false;
        let mut greater = false;
        for d in self.0.keys().chain(other.0.keys()) {
            match self.get(*d).cmp(&other.get(*d)) {
                Ordering::Less => less = true,
                Ordering::Greater => greater = true,
                Ordering::Equal => {}
            }
            if less && greater {
                return VvOrdering::Concurrent;
            }
        }
        match (less, greater) {
            (false, false) => VvOrdering::Equal,
            (true, false) => VvOrdering::Less,
            (false, true) => VvOrdering::Greater,
            (true, true) => VvOrdering::Concurrent,
        }
    }

    /// `self ≤ other`: every change in `self` is also in `other`.
    pub fn le(&self, other: &Self) -> bool {
        matches!(self.compare(other), VvOrdering::Equal | VvOrdering::Less)
    }

    /// Iterates the (device, counter) pairs in device order.
    pub fn iter(&self) -> impl Iterator<Item = (DeviceId, u64)> + '_ {
        self.0.iter().map(|(d, c)| (*d, *c))
    }
}

impl FromIterator<(DeviceId, u64)> for VersionVector {
    fn from_iter<T: IntoIterator<Item = (DeviceId, u64)>>(iter: T) -> Self {
        let mut v = Self::new();
        for (d, c) in iter {
            v.set(d, c);
        }
        v
    }
}

impl<'de> Deserialize<'de> for VersionVector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = BTreeMap::<DeviceId, u64>::deserialize(d)?;
        // Canonical form: zero counters carry no information and are dropped.
        Ok(m.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dev(n: u8) -> DeviceId {
        DeviceId::from_bytes([n; 8])
    }

    fn arb_vv() -> impl Strategy<Value = VersionVector> {
        proptest::collection::btree_map(0u8..5, 0u64..4, 0..5)
            .prop_map(|m| m.into_iter().map(|(d, c)| (dev(d), c)).collect())
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in arb_vv(), b in arb_vv()) {
            prop_assert_eq!(a.merged(&b), b.merged(&a));
        }

        #[test]
        fn merge_is_associative(a in arb_vv(), b in arb_vv(), c in arb_vv()) {
            prop_assert_eq!(a.merged(&b).merged(&c), a.merged(&b.merged(&c)));
        }

        #[test]
        fn merge_is_idempotent(a in arb_vv(), b in arb_vv()) {
            prop_assert_eq!(a.merged(&a), a.clone());
            let m = a.merged(&b);
            prop_assert_eq!(m.merged(&b), m);
        }

        #[test]
        fn merge_is_an_upper_bound(a in arb_vv(), b in arb_vv()) {
            let m = a.merged(&b);
            prop_assert!(a.le(&m));
            prop_assert!(b.le(&m));
        }

        #[test]
        fn compare_is_antisymmetric(a in arb_vv(), b in arb_vv()) {
            prop_assert_eq!(a.compare(&b), b.compare(&a).reverse());
            prop_assert_eq!(a.compare(&b) == VvOrdering::Equal, a == b);
        }

        #[test]
        fn increment_makes_strictly_greater(a in arb_vv(), d in 0u8..6) {
            prop_assert_eq!(a.incremented(dev(d)).compare(&a), VvOrdering::Greater);
        }

        #[test]
        fn serde_round_trip(a in arb_vv()) {
            let s = serde_json::to_string(&a).unwrap();
            let back: VersionVector = serde_json::from_str(&s).unwrap();
            prop_assert_eq!(back, a);
        }
    }

    #[test]
    fn concurrent_edits_compare_concurrent() {
        let base = VersionVector::new().incremented(dev(1));
        let a = base.incremented(dev(1));
        let b = base.incremented(dev(2));
        assert_eq!(a.compare(&b), VvOrdering::Concurrent);
        assert_eq!(base.compare(&a), VvOrdering::Less);
    }

    #[test]
    fn zero_counters_are_dropped_on_decode() {
        let s = format!("{{\"{}\":0,\"{}\":2}}", dev(1), dev(2));
        let v: VersionVector = serde_json::from_str(&s).unwrap();
        assert_eq!(v, [(dev(2), 2)].into_iter().collect());
        assert!(serde_json::from_str::<VersionVector>("{\"xyz\":1}").is_err());
    }
}
