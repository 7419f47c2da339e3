//! Byte counts as people read and write them: `1.5 GiB` out, `10GiB`, `500MB`, `2T` in.

/// Binary units, as printed.
const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

/// `n` bytes with a binary unit and one decimal: `0 B`, `1023 B`, `1.5 KiB`, `5.0 GiB`.
pub fn format(n: u64) -> String {
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Parses a byte count: a number (decimals allowed with a unit) and an optional unit,
/// `K`/`KiB` (1024), `KB` (1000), and so on up to `P`; case-insensitive, a space
/// allowed between. Anything else is an error that says what is accepted.
pub fn parse(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let bad = || {
        format!("{s:?} is not a size: write a number of bytes, optionally with a unit such as 500MB, 10GiB or 2T")
    };
    let (power, base) = match unit.as_str() {
        "" | "b" => (0, 1024u64),
        u => {
            let (letter, rest) = u.split_at(1);
            let power = match letter {
                "k" => 1,
                "m" => 2,
                "g" => 3,
                "t" => 4,
                "p" => 5,
                _ => return Err(bad()),
            };
            match rest {
                "" | "i" | "ib" => (power, 1024),
                "b" => (power, 1000),
                _ => return Err(bad()),
            }
        }
    };
    let scale = base.pow(power);
    if num.is_empty() || num.matches('.').count() > 1 || (power == 0 && num.contains('.')) {
        return Err(bad());
    }
    let too_big = || format!("{s:?} is too large");
    match num.split_once('.') {
        None => num
            .parse::<u64>()
            .map_err(|_| too_big())?
            .checked_mul(scale)
            .ok_or_else(too_big),
        Some((whole, frac)) => {
            let value: f64 = format!("{}.{frac}", if whole.is_empty() { "0" } else { whole })
                .parse()
                .map_err(|_| bad())?;
            let bytes = value * scale as f64;
            if bytes >= u64::MAX as f64 {
                return Err(too_big());
            }
            Ok(bytes.round() as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_well() {
        assert_eq!(format(0), "0 B");
        assert_eq!(format(1023), "1023 B");
        assert_eq!(format(1536), "1.5 KiB");
        assert_eq!(format(5 * 1024 * 1024 * 1024), "5.0 GiB");
        assert_eq!(format(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse("0"), Ok(0));
        assert_eq!(parse("123"), Ok(123));
        assert_eq!(parse("123B"), Ok(123));
        assert_eq!(parse("1K"), Ok(1024));
        assert_eq!(parse("1kib"), Ok(1024));
        assert_eq!(parse("1KB"), Ok(1000));
        assert_eq!(parse("10GiB"), Ok(10 << 30));
        assert_eq!(parse("10 GiB"), Ok(10 << 30));
        assert_eq!(parse("500MB"), Ok(500_000_000));
        assert_eq!(parse("1.5G"), Ok(3 << 29));
        assert_eq!(parse("2T"), Ok(2 << 40));
        for bad in ["", "G", "1.2", "1..2G", "-1", "1X", "1GiBs", "1 2", "ten"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse("99999999999999999999")
            .unwrap_err()
            .contains("too large"));
        assert!(parse("20000000P").unwrap_err().contains("too large"));
    }

    #[test]
    fn formatted_sizes_parse_back_close() {
        for n in [1u64, 1000, 1 << 20, 3 << 29, 7 << 40] {
            let text = format(n).replace(' ', "");
            let back = parse(&text).unwrap();
            assert!(back.abs_diff(n) <= n / 20, "{n} -> {text} -> {back}");
        }
    }
}
