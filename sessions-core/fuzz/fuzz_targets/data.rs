//! Session data: `Data::decode` / `Data::from_vec` on arbitrary bytes, and `Data::apply`
//! of arbitrary changes against a model (a sorted map).
//!
//! Checked: nothing panics; an accepted stored form reads back byte for byte and its keys
//! are valid and increasing; applied changes give exactly the model's entries, in key order,
//! or `TooLarge` when the model's encoding exceeds the limit (and then nothing changes).

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use sessions_core::data::{valid_key, Changes, Data};

fuzz_target!(|input: &[u8]| {
    // First byte: the limit (× 8 bytes); then the stored form to decode, up to a 0xff byte;
    // the rest: changes, each `[key len][key][value len][value]`.
    let Some((&limit, rest)) = input.split_first() else { return };
    let limit = usize::from(limit) * 8;
    let (stored, changes_bytes) = match rest.iter().position(|&b| b == 0xff) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let decoded = Data::decode(stored);
    assert_eq!(decoded, Data::from_vec(stored.to_vec()));
    let data = match decoded {
        Some(d) => {
            assert_eq!(d.encoded(), stored);
            let keys: Vec<&[u8]> = d.iter().map(|(k, _)| k).collect();
            assert!(keys.iter().all(|k| valid_key(k)));
            assert!(keys.windows(2).all(|w| w[0] < w[1]));
            d
        }
        None => Data::new(),
    };
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> =
        data.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
    let mut changes = Changes::new();
    let mut rest = changes_bytes;
    while let [klen, tail @ ..] = rest {
        let klen = usize::from(*klen % 65);
        let Some((key, tail)) = tail.split_at_checked(klen) else { break };
        let Some((&vlen, tail)) = tail.split_first() else { break };
        let Some((value, tail)) = tail.split_at_checked(usize::from(vlen)) else { break };
        rest = tail;
        if !valid_key(key) {
            continue;
        }
        changes.set(key, value);
        if value.is_empty() {
            model.remove(key);
        } else {
            model.insert(key.to_vec(), value.to_vec());
        }
    }
    let size: usize = model.iter().map(|(k, v)| 3 + k.len() + v.len()).sum();
    match data.apply(&changes, limit) {
        Ok(after) => {
            assert!(size <= limit);
            assert_eq!(after.len(), size);
            let got: Vec<(Vec<u8>, Vec<u8>)> =
                after.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
            let want: Vec<(Vec<u8>, Vec<u8>)> = model.into_iter().collect();
            assert_eq!(got, want);
            assert_eq!(Data::decode(after.encoded()).as_ref(), Some(&after));
        }
        Err(e) => {
            assert!(size > limit, "refused {size} bytes under the limit {limit}");
            assert_eq!(e.size, size);
        }
    }
});
