//! The shard of a device: which of a sharded stream's N keys (`<stream>:{0}` … `<stream>:{N-1}`) the
//! ingestion service writes a device's positions to, so that a device's positions stay in one shard, in
//! order. Producers in other languages compute the same function: it is stated here in full, with test
//! vectors (`shard_vectors` below, and README "Scaling out").
//!
//! `shard_of(device_id, n)` = `jump(fnv1a64(utf8(device_id)), n)`:
//! - FNV-1a, 64 bits, over the device id's UTF-8 bytes: offset basis `0xcbf29ce484222325`, prime
//!   `0x100000001b3`, each byte XORed in before the multiplication (mod 2^64);
//! - jump consistent hash (Lamping and Veach, 2014) of that key into `n` buckets: growing `n` to `n + 1`
//!   moves only about `1/(n + 1)` of the devices (to the new shard), none between old shards.
//!
//! In JavaScript (64-bit arithmetic with `BigInt`, the division in doubles):
//! ```text
//! function shardOf(deviceId, n) {
//!   let key = 0xcbf29ce484222325n;
//!   for (const byte of new TextEncoder().encode(deviceId)) {
//!     key = ((key ^ BigInt(byte)) * 0x100000001b3n) & 0xffffffffffffffffn;
//!   }
//!   let b = -1, j = 0;
//!   while (j < n) {
//!     b = j;
//!     key = (key * 2862933555777941757n + 1n) & 0xffffffffffffffffn;
//!     j = Math.floor((b + 1) * (2 ** 31 / (Number(key >> 33n) + 1)));
//!   }
//!   return Math.max(b, 0);
//! }
//! ```

/// FNV-1a, 64 bits, of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Jump consistent hash of `key` into `buckets` buckets (0 for no buckets).
pub fn jump(mut key: u64, buckets: u32) -> u32 {
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        // Exact in doubles: (key >> 33) + 1 ≤ 2^31, and the quotient is truncated as the reference does.
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    u32::try_from(b.max(0)).unwrap_or(0)
}

/// The shard (`0..shards`) of `device_id`'s positions; 0 when there is one shard or none.
pub fn shard_of(device_id: &str, shards: u32) -> u32 {
    jump(fnv1a64(device_id.as_bytes()), shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors README "Scaling out" gives producers (checked against an independent implementation).
    #[test]
    fn shard_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        for (device, shards, expected) in VECTORS {
            assert_eq!(shard_of(device, shards), expected, "shard_of({device:?}, {shards})");
        }
    }

    /// Device id, shard count, shard.
    const VECTORS: [(&str, u32, u32); 12] = [
        ("truck-1", 16, 9),
        ("truck-2", 16, 13),
        ("device-0", 16, 6),
        ("device-12345", 16, 0),
        ("ü-7", 16, 1),
        ("bus/42", 4, 1),
        ("bus/42", 5, 1),
        ("bus/42", 16, 1),
        ("bus/42", 1000, 298),
        ("", 16, 13),
        ("0123456789abcdef", 16, 1),
        ("347295748593021", 3, 0),
    ];

    #[test]
    fn one_shard_or_none_is_shard_zero() {
        for device in ["", "truck-1", "ü"] {
            assert_eq!(shard_of(device, 1), 0);
            assert_eq!(shard_of(device, 0), 0);
        }
    }

    #[test]
    fn shards_are_in_range_and_spread_evenly() {
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[shard_of(&format!("device-{i}"), 16) as usize] += 1;
        }
        // 1,000 expected per shard; a fair hash stays well within ±15 %.
        assert!(counts.iter().all(|&c| (850..=1150).contains(&c)), "{counts:?}");
    }

    #[test]
    fn growing_by_one_shard_moves_devices_only_to_the_new_one() {
        let (mut moved, total) = (0, 10_000);
        for i in 0..total {
            let device = format!("device-{i}");
            let (before, after) = (shard_of(&device, 16), shard_of(&device, 17));
            if before != after {
                assert_eq!(after, 16, "{device} moved from {before} to {after}, not to the new shard");
                moved += 1;
            }
        }
        // About 1/17 of the devices (588); far from the ~94 % a modulo would move.
        assert!((450..=730).contains(&moved), "{moved} of {total} moved");
    }
}
