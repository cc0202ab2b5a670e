//! Reading a `numeric` datum straight into a `Decimal`.
//!
//! Every sum, avg, min and max measure value passes through here for every captured
//! row; going through `numeric_out` and parsing the text cost an allocation and two
//! conversions per value. The on-disk layout is stable (`src/backend/utils/adt/numeric.c`):
//! a 2-byte header (short form: sign, display scale and weight packed; long form: sign and
//! display scale, then a 2-byte weight), then base-10000 digits. Anything this decoder does
//! not handle exactly (NaN, infinities, more than 28 significant digits) returns `None`,
//! and the caller takes the text path, which reports or rounds those as before.

use pgrx::prelude::*;
use rust_decimal::Decimal;

const SIGN_MASK: u16 = 0xC000;
const NEG: u16 = 0x4000;
const SHORT: u16 = 0x8000;
const SPECIAL: u16 = 0xC000;
const SHORT_SIGN: u16 = 0x2000;
const SHORT_DSCALE_MASK: u16 = 0x1F80;
const SHORT_DSCALE_SHIFT: u16 = 7;
const SHORT_WEIGHT_SIGN: u16 = 0x0040;
const SHORT_WEIGHT_MASK: u16 = 0x003F;
const DSCALE_MASK: u16 = 0x3FFF;
/// Decimal's limit: 28 decimal places, 96-bit mantissa.
const MAX_SCALE: u16 = 28;

/// The exact value of a numeric datum, or `None` when it is not a finite number that
/// fits a `Decimal` exactly.
///
/// # Safety
/// `datum` must be a non-null `numeric` datum (it may be toasted or short-headered).
pub unsafe fn to_decimal(datum: pg_sys::Datum) -> Option<Decimal> {
    unsafe {
        let raw = datum.cast_mut_ptr::<pg_sys::varlena>();
        let detoasted = pg_sys::pg_detoast_datum_packed(raw);
        let len = pgrx::varlena::varsize_any_exhdr(detoasted);
        let data = pgrx::varlena::vardata_any(detoasted) as *const u8;
        let value = decode(std::slice::from_raw_parts(data, len));
        if detoasted != raw {
            pg_sys::pfree(detoasted.cast());
        }
        value
    }
}

/// Decodes the bytes after the varlena header.
fn decode(bytes: &[u8]) -> Option<Decimal> {
    let word = |at: usize| -> Option<u16> {
        Some(u16::from_ne_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
    };
    let header = word(0)?;
    let (negative, dscale, weight, digits_at) = match header & SIGN_MASK {
        SPECIAL => return None,
        SHORT => {
            let magnitude = (header & SHORT_WEIGHT_MASK) as i16;
            let weight = if header & SHORT_WEIGHT_SIGN != 0 {
                !(SHORT_WEIGHT_MASK as i16) | magnitude
            } else {
                magnitude
            };
            let dscale = (header & SHORT_DSCALE_MASK) >> SHORT_DSCALE_SHIFT;
            (header & SHORT_SIGN != 0, dscale, weight, 2)
        }
        sign => (sign == NEG, header & DSCALE_MASK, word(2)? as i16, 4),
    };
    if dscale > MAX_SCALE || !(bytes.len() - digits_at.min(bytes.len())).is_multiple_of(2) {
        return None;
    }
    let mut mantissa: i128 = 0;
    let mut ndigits: i32 = 0;
    for chunk in bytes.get(digits_at..)?.chunks_exact(2) {
        let digit = i16::from_ne_bytes([chunk[0], chunk[1]]);
        if !(0..10_000).contains(&digit) {
            return None;
        }
        mantissa = mantissa
            .checked_mul(10_000)?
            .checked_add(i128::from(digit))?;
        ndigits += 1;
    }
    // value = mantissa × 10^exponent
    let exponent = if ndigits == 0 {
        0
    } else {
        4 * (i32::from(weight) - (ndigits - 1))
    };
    let (mut mantissa, mut scale) = if exponent >= 0 {
        (
            mantissa.checked_mul(10i128.checked_pow(exponent as u32)?)?,
            0i32,
        )
    } else {
        (mantissa, -exponent)
    };
    // Keep the display scale, as the text form (and so SQL's sums) would.
    let dscale = i32::from(dscale);
    if scale < dscale {
        mantissa = mantissa.checked_mul(10i128.checked_pow((dscale - scale) as u32)?)?;
    } else if scale > dscale {
        let divisor = 10i128.checked_pow((scale - dscale) as u32)?;
        if mantissa % divisor != 0 {
            return None;
        }
        mantissa /= divisor;
    }
    scale = dscale;
    if negative {
        mantissa = -mantissa;
    }
    Decimal::try_from_i128_with_scale(mantissa, scale as u32).ok()
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::to_decimal;
    use pgrx::prelude::*;
    use pgrx::AnyNumeric;
    use rust_decimal::Decimal;

    /// The fast path agrees with numeric_out + parse on every value it accepts, keeps
    /// the display scale, and accepts every ordinary value.
    #[pgrx::pg_test]
    fn agrees_with_the_text_form() {
        let values: Vec<(AnyNumeric, String)> = Spi::connect(|c| {
            c.select(
                "SELECT v, v::text FROM (VALUES (0::numeric), (1.5), (-0.0001), (10000),
                        (0.10), (123456789012345678.123456789), (1e20), (-9.99e-15),
                        (99999999.99), (-1), (0.000000000000000000000000001)) t(v)
                 UNION ALL
                 SELECT v, v::text FROM (
                     SELECT round(((random() - 0.5) * 10 ^ (k % 24))::numeric, k % 9) AS v
                       FROM generate_series(1, 5000) k) r",
                None,
                &[],
            )?
            .map(|r| {
                Ok((
                    r.get::<AnyNumeric>(1)?.expect("value"),
                    r.get::<String>(2)?.expect("text"),
                ))
            })
            .collect::<Result<Vec<_>, pgrx::spi::SpiError>>()
        })
        .expect("values");
        assert!(values.len() > 5000);
        let mut accepted = 0;
        for (n, text) in values {
            let datum = n.into_datum().expect("datum");
            let fast = unsafe { to_decimal(datum) };
            // Values beyond Decimal's 28 digits go to the text path, as before.
            assert_eq!(fast, Decimal::from_str_exact(&text).ok(), "value {text}");
            if let Some(d) = fast {
                assert_eq!(d.to_string(), text, "display scale of {text}");
                accepted += 1;
            }
        }
        assert!(accepted > 3000, "only {accepted} values took the fast path");
        // NaN falls back to the text path (which reports it).
        let nan = Spi::get_one::<AnyNumeric>("SELECT 'NaN'::numeric")
            .expect("nan")
            .expect("value");
        assert_eq!(
            unsafe { to_decimal(nan.into_datum().expect("datum")) },
            None
        );
    }
}

/// Pure unit tests of the decoder on hand-built bytes.
#[cfg(test)]
mod unit {
    use super::decode;
    use rust_decimal::Decimal;

    fn long(negative: bool, dscale: u16, weight: i16, digits: &[i16]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&((if negative { 0x4000 } else { 0 }) | dscale).to_ne_bytes());
        b.extend_from_slice(&weight.to_ne_bytes());
        for d in digits {
            b.extend_from_slice(&d.to_ne_bytes());
        }
        b
    }

    fn short(negative: bool, dscale: u16, weight: i16, digits: &[i16]) -> Vec<u8> {
        let w = (weight as u16) & 0x3F | if weight < 0 { 0x40 } else { 0 };
        let h = 0x8000 | if negative { 0x2000 } else { 0 } | (dscale << 7) | w;
        let mut b = h.to_ne_bytes().to_vec();
        for d in digits {
            b.extend_from_slice(&d.to_ne_bytes());
        }
        b
    }

    fn dec(s: &str) -> Decimal {
        Decimal::from_str_exact(s).expect("decimal")
    }

    #[test]
    fn decodes_both_header_forms() {
        // 1234.50 = digits [1234, 5000], weight 0, dscale 2
        assert_eq!(
            decode(&short(false, 2, 0, &[1234, 5000])),
            Some(dec("1234.50"))
        );
        assert_eq!(
            decode(&long(true, 2, 0, &[1234, 5000])),
            Some(dec("-1234.50"))
        );
        // 0.0001 = [1], weight -1, dscale 4
        assert_eq!(decode(&short(false, 4, -1, &[1])), Some(dec("0.0001")));
        // 120000 = [12], weight 1, dscale 0
        assert_eq!(decode(&short(false, 0, 1, &[12])), Some(dec("120000")));
        // zero with a display scale
        assert_eq!(decode(&short(false, 3, 0, &[])), Some(dec("0.000")));
    }

    #[test]
    fn refuses_what_it_cannot_represent_exactly() {
        assert_eq!(decode(&0xC000u16.to_ne_bytes()), None); // NaN
        assert_eq!(decode(&long(false, 0, 9, &[1])), None); // 10^36
        assert_eq!(decode(&[0x80]), None); // truncated
        assert_eq!(decode(&long(false, 0, 0, &[12_345])), None); // digit out of range
    }
}
