//! Durations as the config writes them: `"500ms"`, `"30s"`, `"5m"`, `"1h30m"`; read, written
//! back, and the serde glue for duration fields.

use std::{fmt, time::Duration};

use serde::{Deserializer, Serializer};

/// Parses "500ms", "30s", "5m", "1h", "1h30m"; a bare number is refused (no unit to guess).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const SHAPE: &str = "a duration like \"30s\", \"500ms\", \"5m\" or \"1h30m\"";
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(format!("empty: write {SHAPE}"));
    }
    let too_long = || format!("`{text}` is too long a duration");
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("`{text}` is not {SHAPE}"));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| too_long())?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds = |factor: u64| n.checked_mul(factor).map(Duration::from_secs);
        let part = match &rest[..unit] {
            "ms" => Some(Duration::from_millis(n)),
            "s" => seconds(1),
            "m" => seconds(60),
            "h" => seconds(3600),
            "" => return Err(format!("`{text}` has no unit: write e.g. \"{n}s\"")),
            u => return Err(format!("`{text}`: unknown unit `{u}` (ms, s, m, h)")),
        };
        total = part
            .and_then(|part| total.checked_add(part))
            .ok_or_else(too_long)?;
        rest = &rest[unit..];
    }
    Ok(total)
}

/// Serde's reading of a duration field (`deserialize_with = "duration::deserialize"`): the
/// text as `parse_duration` takes it; a bare number is refused with the string to write.
pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration string such as \"30s\", \"500ms\", \"5m\" or \"1h30m\"")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(E::custom)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
            let example = if v < 0 {
                "30s".to_owned()
            } else {
                format!("{v}s")
            };
            Err(E::custom(format!(
                "a bare number ({v}) has no unit: write a string such as \"{example}\""
            )))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "a bare number ({v}) has no unit: write a string such as \"{v}s\""
            )))
        }
    }
    d.deserialize_any(Visitor)
}

/// A duration as the config writes it: `"500ms"`, `"30s"`, `"5m"`, `"1h30m"`.
pub fn duration_text(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let (h, m, sec, rest) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    for (n, unit) in [(h, "h"), (m, "m"), (sec, "s"), (rest, "ms")] {
        if n > 0 {
            out += &format!("{n}{unit}");
        }
    }
    out
}

/// Serde's writing of a duration field, as `duration_text` spells it.
pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&duration_text(*d))
}

/// `serialize` for an optional field (with `skip_serializing_if = "Option::is_none"`).
pub(super) fn serialize_optional<S: Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => serialize(d, s),
        None => s.serialize_none(),
    }
}

/// `deserialize` for an optional field (with `#[serde(default)]` for when it is absent).
pub(super) fn deserialize_optional<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{duration_text, parse_duration};
    use crate::config::fixture::ConfigFile;

    #[test]
    fn durations_parse() {
        for (text, want) in [
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("1h30m", Duration::from_secs(5400)),
            ("1m500ms", Duration::from_millis(60_500)),
            ("0s", Duration::ZERO),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
            assert_eq!(duration_text(want), text, "written back");
        }
        for bad in [
            "",
            "30",
            "3x",
            "s",
            "-5s",
            "1.5s",
            "1h 30m",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        // Overflow is an error, not a panic.
        assert!(parse_duration("9999999999999999999h").is_err());
        assert!(parse_duration("18446744073709551615s18446744073709551615s").is_err());

        let e = ConfigFile::good()
            .set("target_group[0]", "deregistration_delay", "30")
            .errors();
        assert_eq!(
            e[0].field, "target_group[0].deregistration_delay",
            "{}",
            e[0]
        );
        assert!(e[0].message.contains("\"30s\""), "{}", e[0]);

        let c = ConfigFile::good()
            .set("target_group[0]", "deregistration_delay", r#""2m""#)
            .config();
        assert_eq!(
            c.target_groups[0].deregistration_delay,
            Duration::from_secs(120)
        );
    }
}
