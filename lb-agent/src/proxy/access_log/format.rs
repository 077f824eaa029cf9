//! The access log's two line formats: JSON (one object per line) and text (AWS ALB's field
//! order, space separated). Both are pure functions of a record, so tests pin them exactly.
//!
//! Many fields come from the client (host, URI, user agent, SNI, request id): whatever they
//! hold, a record stays one line with its fields where a reader expects them. JSON escapes
//! them as JSON strings; the text format backslash-escapes quotes and control characters inside
//! quoted fields, and every character that could split or end a field in unquoted ones.

use std::{
    fmt::Write as _,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::AccessRecord;

/// Appends `record` to `out` as one JSON object and a newline. Absent values are `null`, so
/// every line has every key; `status` is `null` for a `tls` listener's connection.
pub(super) fn json_line(record: &AccessRecord, out: &mut String) {
    let r = record;
    out.push_str("{\"time\":\"");
    rfc3339_millis(r.time, out);
    out.push_str("\",\"client\":");
    json_string(&r.client.to_string(), out);
    out.push_str(",\"listener\":");
    json_string(&r.listener, out);
    out.push_str(",\"rule\":");
    json_number(r.rule, out);
    out.push_str(",\"target_group\":");
    json_opt_string(r.target_group.as_deref(), out);
    out.push_str(",\"target\":");
    json_opt_string(r.target.map(|t| t.to_string()).as_deref(), out);
    out.push_str(",\"method\":");
    json_opt_string(r.method.as_ref().map(hyper::Method::as_str), out);
    out.push_str(",\"host\":");
    json_opt_string(r.host.as_deref(), out);
    out.push_str(",\"uri\":");
    json_opt_string(r.uri.as_deref(), out);
    out.push_str(",\"version\":");
    json_string(r.version, out);
    out.push_str(",\"status\":");
    json_number((r.status != 0).then_some(r.status), out);
    let _ = write!(
        out,
        ",\"bytes_in\":{},\"bytes_out\":{},\"request_duration\":",
        r.bytes_in, r.bytes_out
    );
    seconds(r.request_duration, out);
    out.push_str(",\"target_duration\":");
    match r.target_duration {
        Some(d) => seconds(d, out),
        None => out.push_str("null"),
    }
    out.push_str(",\"response_duration\":");
    seconds(r.response_duration, out);
    out.push_str(",\"tls_version\":");
    json_opt_string(r.tls_version, out);
    out.push_str(",\"tls_cipher\":");
    json_opt_string(r.tls_cipher, out);
    out.push_str(",\"sni\":");
    json_opt_string(r.sni.as_deref(), out);
    out.push_str(",\"request_id\":");
    json_opt_string(r.request_id.as_deref(), out);
    out.push_str(",\"user_agent\":");
    json_opt_string(r.user_agent.as_deref(), out);
    out.push_str(",\"error\":");
    json_opt_string(r.error, out);
    out.push_str("}\n");
}

/// Appends `record` to `out` as one text line: `time client:port listener target:port
/// request_duration target_duration response_duration status bytes_in bytes_out "METHOD URI
/// VERSION" "user agent" tls_cipher tls_version target_group "request_id" "host" sni rule
/// error`, `-` for absent values (README, "Access log").
pub(super) fn text_line(record: &AccessRecord, out: &mut String) {
    let r = record;
    rfc3339_millis(r.time, out);
    let _ = write!(out, " {} ", r.client);
    bare(Some(&r.listener), out);
    out.push(' ');
    match r.target {
        Some(target) => {
            let _ = write!(out, "{target}");
        }
        None => out.push('-'),
    }
    out.push(' ');
    seconds(r.request_duration, out);
    out.push(' ');
    match r.target_duration {
        Some(d) => seconds(d, out),
        None => out.push('-'),
    }
    out.push(' ');
    seconds(r.response_duration, out);
    if r.status == 0 {
        out.push_str(" -");
    } else {
        let _ = write!(out, " {}", r.status);
    }
    let _ = write!(out, " {} {} \"", r.bytes_in, r.bytes_out);
    quoted_inner(r.method.as_ref().map_or("-", hyper::Method::as_str), out);
    out.push(' ');
    quoted_inner(r.uri.as_deref().unwrap_or("-"), out);
    out.push(' ');
    quoted_inner(r.version, out);
    out.push_str("\" ");
    quoted(r.user_agent.as_deref(), out);
    out.push(' ');
    bare(r.tls_cipher, out);
    out.push(' ');
    bare(r.tls_version, out);
    out.push(' ');
    bare(r.target_group.as_deref(), out);
    out.push(' ');
    quoted(r.request_id.as_deref(), out);
    out.push(' ');
    quoted(r.host.as_deref(), out);
    out.push(' ');
    bare(r.sni.as_deref(), out);
    match r.rule {
        Some(priority) => {
            let _ = write!(out, " {priority} ");
        }
        None => out.push_str(" - "),
    }
    bare(r.error, out);
    out.push('\n');
}

/// `time` as RFC 3339 in UTC with milliseconds, `2024-05-01T12:00:00.123Z` (a time before the
/// epoch, which only a broken clock gives, shows as the epoch).
pub(super) fn rfc3339_millis(time: SystemTime, out: &mut String) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let of_day = secs % 86_400;
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        since.subsec_millis()
    );
}

/// The proleptic Gregorian date `days` days after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days at or after the epoch: no signed arithmetic needed).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Counted from 0000-03-01, so that the leap day ends a year; eras are 400 years.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

/// A duration as seconds with millisecond precision (rounded), `0.012`.
fn seconds(d: Duration, out: &mut String) {
    let millis = (d.as_nanos() + 500_000) / 1_000_000;
    let _ = write!(out, "{}.{:03}", millis / 1000, millis % 1000);
}

fn json_number(value: Option<impl std::fmt::Display>, out: &mut String) {
    match value {
        Some(v) => {
            let _ = write!(out, "{v}");
        }
        None => out.push_str("null"),
    }
}

fn json_opt_string(value: Option<&str>, out: &mut String) {
    match value {
        Some(v) => json_string(v, out),
        None => out.push_str("null"),
    }
}

/// `value` as a JSON string: quotes, backslashes and control characters escaped, and the
/// Unicode line and paragraph separators too (JavaScript readers take them for line ends).
fn json_string(value: &str, out: &mut String) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A text field in double quotes; `"-"` when absent.
fn quoted(value: Option<&str>, out: &mut String) {
    out.push('"');
    quoted_inner(value.unwrap_or("-"), out);
    out.push('"');
}

/// The inside of a quoted text field: `\"` and `\\`, and `\xHH` for each byte of a control
/// character or line separator, so the field can neither end early nor break the line.
fn quoted_inner(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => hex_bytes(c, out),
            c => out.push(c),
        }
    }
}

/// An unquoted text field: only printable ASCII other than `"` and `\` passes as is (a space
/// would split the field), the rest is `\xHH` per byte; `-` when absent or empty.
fn bare(value: Option<&str>, out: &mut String) {
    match value {
        None | Some("") => out.push('-'),
        Some(v) => {
            for c in v.chars() {
                if c.is_ascii_graphic() && c != '"' && c != '\\' {
                    out.push(c);
                } else {
                    hex_bytes(c, out);
                }
            }
        }
    }
}

/// `\xHH` for each UTF-8 byte of `c`.
fn hex_bytes(c: char, out: &mut String) {
    let mut buf = [0u8; 4];
    for b in c.encode_utf8(&mut buf).bytes() {
        let _ = write!(out, "\\x{b:02x}");
    }
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, sync::Arc};

    use super::*;

    /// 2024-05-01T12:00:00.123Z.
    fn at() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_714_564_800_123)
    }

    fn https_request() -> AccessRecord {
        AccessRecord {
            time: at(),
            client: "198.18.0.1:40000".parse().expect("addr"),
            listener: Arc::from("web-https"),
            rule: Some(10),
            target_group: Some(Arc::from("api")),
            target: Some("198.18.2.2:8080".parse().expect("addr")),
            method: Some(hyper::Method::GET),
            host: Some("api.example.com".to_owned()),
            uri: Some("/v1/items?a=1".to_owned()),
            version: "HTTP/2",
            status: 200,
            bytes_in: 0,
            bytes_out: 512,
            request_duration: Duration::from_micros(1_400),
            target_duration: Some(Duration::from_micros(12_300)),
            response_duration: Duration::from_millis(1_014),
            tls_version: Some("TLSv1.3"),
            tls_cipher: Some("TLS13_AES_128_GCM_SHA256"),
            sni: Some("api.example.com".to_owned()),
            request_id: Some("Root=1-abc".to_owned()),
            user_agent: Some("curl/8.5.0".to_owned()),
            error: None,
        }
    }

    /// A `tls` listener's connection that found no target: most fields absent.
    fn tls_connection() -> AccessRecord {
        AccessRecord {
            time: at(),
            client: "[fd00:198:18::1]:40000"
                .parse::<SocketAddr>()
                .expect("addr"),
            listener: Arc::from("tls"),
            rule: None,
            target_group: Some(Arc::from("tcp-group")),
            target: None,
            method: None,
            host: None,
            uri: None,
            version: "TCP",
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            request_duration: Duration::from_micros(300),
            target_duration: None,
            response_duration: Duration::from_micros(300),
            tls_version: None,
            tls_cipher: None,
            sni: None,
            request_id: None,
            user_agent: None,
            error: Some("no_target_in_service"),
        }
    }

    fn json(record: &AccessRecord) -> String {
        let mut out = String::new();
        json_line(record, &mut out);
        out
    }

    fn text(record: &AccessRecord) -> String {
        let mut out = String::new();
        text_line(record, &mut out);
        out
    }

    #[test]
    fn json_lines_carry_every_field_in_order() {
        assert_eq!(
            json(&https_request()),
            concat!(
                r#"{"time":"2024-05-01T12:00:00.123Z","client":"198.18.0.1:40000","#,
                r#""listener":"web-https","rule":10,"target_group":"api","#,
                r#""target":"198.18.2.2:8080","method":"GET","host":"api.example.com","#,
                r#""uri":"/v1/items?a=1","version":"HTTP/2","status":200,"bytes_in":0,"#,
                r#""bytes_out":512,"request_duration":0.001,"target_duration":0.012,"#,
                r#""response_duration":1.014,"tls_version":"TLSv1.3","#,
                r#""tls_cipher":"TLS13_AES_128_GCM_SHA256","sni":"api.example.com","#,
                r#""request_id":"Root=1-abc","user_agent":"curl/8.5.0","error":null}"#,
                "\n"
            )
        );
        assert_eq!(
            json(&tls_connection()),
            concat!(
                r#"{"time":"2024-05-01T12:00:00.123Z","client":"[fd00:198:18::1]:40000","#,
                r#""listener":"tls","rule":null,"target_group":"tcp-group","target":null,"#,
                r#""method":null,"host":null,"uri":null,"version":"TCP","status":null,"#,
                r#""bytes_in":0,"bytes_out":0,"request_duration":0.000,"#,
                r#""target_duration":null,"response_duration":0.000,"tls_version":null,"#,
                r#""tls_cipher":null,"sni":null,"request_id":null,"user_agent":null,"#,
                r#""error":"no_target_in_service"}"#,
                "\n"
            )
        );
    }

    #[test]
    fn json_lines_parse_as_json() {
        for record in [https_request(), tls_connection()] {
            let line = json(&record);
            let value: serde_json::Value = serde_json::from_str(&line).expect("JSON");
            assert_eq!(value.as_object().map(|o| o.len()), Some(22), "{line}");
        }
    }

    #[test]
    fn text_lines_follow_the_alb_order() {
        assert_eq!(
            text(&https_request()),
            "2024-05-01T12:00:00.123Z 198.18.0.1:40000 web-https 198.18.2.2:8080 0.001 0.012 \
             1.014 200 0 512 \"GET /v1/items?a=1 HTTP/2\" \"curl/8.5.0\" \
             TLS13_AES_128_GCM_SHA256 TLSv1.3 api \"Root=1-abc\" \"api.example.com\" \
             api.example.com 10 -\n"
        );
        assert_eq!(
            text(&tls_connection()),
            "2024-05-01T12:00:00.123Z [fd00:198:18::1]:40000 tls - 0.000 - 0.000 - 0 0 \
             \"- - TCP\" \"-\" - - tcp-group \"-\" \"-\" - - no_target_in_service\n"
        );
    }

    #[test]
    fn untrusted_fields_cannot_break_a_json_line() {
        let mut record = https_request();
        record.user_agent = Some("evil\"\n{\"status\":500}\r\u{1b}[31m\u{2028}".to_owned());
        record.host = Some("a\\b\tc".to_owned());
        let line = json(&record);
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(line.ends_with("}\n"), "{line}");
        assert!(line.contains(r#""host":"a\\b\tc","#), "{line}");
        assert!(
            line.contains(r#""user_agent":"evil\"\n{\"status\":500}\r\u001b[31m\u2028","#),
            "{line}"
        );
        let value: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(value["status"], 200);
        assert_eq!(
            value["user_agent"],
            "evil\"\n{\"status\":500}\r\u{1b}[31m\u{2028}"
        );
    }

    #[test]
    fn untrusted_fields_cannot_break_a_text_line_or_shift_its_fields() {
        let mut record = https_request();
        record.user_agent = Some("a\" 500 \"x\nnext line\u{7f}".to_owned());
        record.host = Some("h\\\"".to_owned());
        record.uri = Some("/p\"q".to_owned());
        record.sni = Some("sp ace\"é\n".to_owned());
        record.request_id = Some(String::new());
        let line = text(&record);
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert_eq!(
            line,
            "2024-05-01T12:00:00.123Z 198.18.0.1:40000 web-https 198.18.2.2:8080 0.001 0.012 \
             1.014 200 0 512 \"GET /p\\\"q HTTP/2\" \"a\\\" 500 \\\"x\\x0anext line\\x7f\" \
             TLS13_AES_128_GCM_SHA256 TLSv1.3 api \"\" \"h\\\\\\\"\" \
             sp\\x20ace\\x22\\xc3\\xa9\\x0a 10 -\n"
        );
    }

    #[test]
    fn durations_round_to_the_millisecond() {
        let mut out = String::new();
        for d in [
            Duration::ZERO,
            Duration::from_micros(499),
            Duration::from_micros(500),
            Duration::from_micros(12_345),
            Duration::from_millis(61_005),
        ] {
            seconds(d, &mut out);
            out.push(' ');
        }
        assert_eq!(out, "0.000 0.000 0.001 0.012 61.005 ");
    }

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            // A leap day, and the last millisecond of a leap year.
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_735_689_599_999, "2024-12-31T23:59:59.999Z"),
            (4_107_542_400_001, "2100-03-01T00:00:00.001Z"),
        ];
        for (millis, expected) in cases {
            let mut out = String::new();
            rfc3339_millis(UNIX_EPOCH + Duration::from_millis(millis), &mut out);
            assert_eq!(out, expected, "{millis}");
        }
        let mut out = String::new();
        rfc3339_millis(UNIX_EPOCH - Duration::from_secs(1), &mut out);
        assert_eq!(out, "1970-01-01T00:00:00.000Z");
    }
}
