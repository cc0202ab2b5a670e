//! The 64-bit value hash that feeds [`crate::Hll`].
//!
//! HLL registers are persisted, and registers written by one version are merged with
//! registers written by the next: if the hash of a value changed, the same user counted in
//! two buckets would look like two users. So the hash is frozen: XXH3-64 (a specified,
//! platform-independent algorithm with published test vectors) with the fixed seed
//! [`HASH_SEED`]. The golden values in the tests below pin it; they must never be edited.
//!
//! Callers hash a canonical byte form of the value (the extension uses the type's binary
//! representation), so equal values give equal bytes and equal hashes.

/// The seed of [`hash_bytes`]. Part of the persisted format: never change it.
pub const HASH_SEED: u64 = 0x7067_5f6b_7069_0001;

/// Hashes a value's bytes for [`crate::Hll::add_hash`]. Stable across versions and platforms.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(bytes, HASH_SEED)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden values, cross-checked against the reference C implementation of XXH3 with
    /// the same seed. If this test fails, the hash changed and every stored HLL sketch would
    /// silently double-count: fix the code, not these numbers.
    #[test]
    fn hash_is_frozen() {
        assert_eq!(hash_bytes(b""), 0x383a_57d7_8f0d_2679);
        assert_eq!(hash_bytes(b"a"), 0xb288_0b96_4bc8_d7ff);
        assert_eq!(hash_bytes(b"user-42"), 0xc54f_27e7_6291_06a9);
        assert_eq!(hash_bytes(&42i64.to_be_bytes()), 0x982e_300c_8379_417b);
        // Longer than XXH3's 240-byte short-input path.
        assert_eq!(hash_bytes(&[0u8; 300]), 0x7570_4340_4189_328f);
    }

    #[test]
    fn hash_uses_the_seed() {
        assert_ne!(
            hash_bytes(b"user-42"),
            xxhash_rust::xxh3::xxh3_64(b"user-42")
        );
    }
}
