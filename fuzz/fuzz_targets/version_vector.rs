//! Version vectors decoded from JSON or built from a binary list of
//! (vector, device, counter) entries; the merge and compare laws must hold on them.
//! Input: `mode u8 | JSON array of vectors` (mode even) or
//! `mode u8 | repeated (vector u8 | device u8 | counter u64 BE)` (mode odd).
#![no_main]

use fsync_common::{DeviceId, VersionVector, VvOrdering};
use libfuzzer_sys::fuzz_target;

fn decode(data: &[u8]) -> Option<[VersionVector; 3]> {
    let (&mode, rest) = data.split_first()?;
    let mut out: [VersionVector; 3] = Default::default();
    if mode % 2 == 0 {
        let vs: Vec<VersionVector> = serde_json::from_slice(rest).ok()?;
        for (slot, v) in out.iter_mut().zip(vs) {
            *slot = v;
        }
    } else {
        let mut entries: [Vec<(DeviceId, u64)>; 3] = Default::default();
        for e in rest.chunks_exact(10) {
            let device = DeviceId::from_bytes([e[1], 0, 0, 0, 0, 0, 0, 0]);
            let counter = u64::from_be_bytes(e[2..10].try_into().expect("8 bytes"));
            entries[usize::from(e[0] % 3)].push((device, counter));
        }
        for (slot, e) in out.iter_mut().zip(entries) {
            *slot = e.into_iter().collect();
        }
    }
    Some(out)
}

fn le(a: &VersionVector, b: &VersionVector) -> bool {
    a.iter().all(|(d, c)| c <= b.get(d))
}

fuzz_target!(|data: &[u8]| {
    let Some([a, b, c]) = decode(data) else {
        return;
    };
    for v in [&a, &b, &c] {
        // Canonical: no zero counters; serde round trip.
        assert!(v.iter().all(|(_, n)| n > 0), "{v:?}");
        let json = serde_json::to_string(v).expect("serializes");
        assert_eq!(
            &serde_json::from_str::<VersionVector>(&json).expect("re-parses"),
            v
        );
        assert_eq!(&v.iter().collect::<VersionVector>(), v);
        // Increment: strictly newer, except a saturated counter stays put.
        for d in v
            .iter()
            .map(|(d, _)| d)
            .chain([DeviceId::from_bytes([0xee; 8])])
        {
            let inc = v.incremented(d);
            if v.get(d) == u64::MAX {
                assert_eq!(&inc, v);
            } else {
                assert_eq!(inc.compare(v), VvOrdering::Greater);
                assert_eq!(inc.get(d), v.get(d) + 1);
            }
        }
    }
    // Merge: commutative, associative, idempotent, the least upper bound.
    let ab = a.merged(&b);
    assert_eq!(ab, b.merged(&a));
    assert_eq!(ab.merged(&c), a.merged(&b.merged(&c)));
    assert_eq!(a.merged(&a), a);
    assert_eq!(ab.merged(&b), ab);
    assert!(a.le(&ab) && b.le(&ab));
    if a.le(&c) && b.le(&c) {
        assert!(ab.le(&c));
    }
    let mut in_place = a.clone();
    in_place.merge(&b);
    assert_eq!(in_place, ab);
    assert!(ab.iter().all(|(_, n)| n > 0));
    // Compare: antisymmetric, Equal iff equal, agrees with the pointwise order,
    // transitive.
    for (x, y) in [(&a, &b), (&b, &c), (&a, &c)] {
        let o = x.compare(y);
        assert_eq!(o, y.compare(x).reverse());
        assert_eq!(o == VvOrdering::Equal, x == y);
        assert_eq!(x.le(y), le(x, y));
        let expected = match (le(x, y), le(y, x)) {
            (true, true) => VvOrdering::Equal,
            (true, false) => VvOrdering::Less,
            (false, true) => VvOrdering::Greater,
            (false, false) => VvOrdering::Concurrent,
        };
        assert_eq!(o, expected, "{x:?} vs {y:?}");
    }
    if a.le(&b) && b.le(&c) {
        assert!(a.le(&c));
    }
});
