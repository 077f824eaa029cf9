//! Where a problem is: errors that name the file, line, column and dotted field, and the
//! mapping between dotted field paths (`target_group[1].targets[0].weight`) and spans of the
//! text, both ways.

use std::{fmt, ops::Range};

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, as the user named it.
    pub file: String,
    /// 1-based; 0 when the problem has no place in the text (an unreadable file).
    pub line: usize,
    /// 1-based, in characters; 0 with `line`.
    pub column: usize,
    /// Dotted path, e.g. `target_group[1].targets[0].weight`.
    pub field: String,
    /// What is wrong, and what would be accepted.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            return write!(f, "{}: {}: {}", self.file, self.field, self.message);
        }
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.field, self.message
        )
    }
}

/// Every problem found in a config file, in file order; `Display` puts one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Byte offset → 1-based (line, column in characters). Never slices, so an offset inside a
/// character cannot panic.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let (mut line, mut column) = (1, 1);
    for (i, c) in text.char_indices() {
        if i >= offset {
            break;
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line, column)
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = part.split_once('[').unwrap_or((part, ""));
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        while let Some((n, r)) = rest.split_once(']') {
            if let Ok(i) = n.parse() {
                out.push(Segment::Index(i));
            }
            rest = r.trim_start_matches('[');
        }
    }
    out
}

/// The field and message of a serde error, the field named as the user wrote it.
pub(super) fn serde_problem(
    doc: &toml_edit::ImDocument<&str>,
    e: &toml::de::Error,
) -> (String, String) {
    let message = e.message().trim().to_owned();
    let mut field = e.span().map(|s| path_at(doc, s.start)).unwrap_or_default();
    // toml points at the offending key (unknown) or the table (missing); either way the path
    // ends at the table, so name the field itself.
    let named = message.starts_with("unknown field") || message.starts_with("missing field");
    if let Some(name) = quoted_name(&message).filter(|_| named)
        && !field.ends_with(&format!(".{name}"))
        && field != name
    {
        if !field.is_empty() {
            field.push('.');
        }
        field.push_str(name);
    }
    if field.is_empty() {
        field = "(top level)".into();
    }
    (field, message)
}

/// The top-level entry a dotted path lies in: `target_group[1]` of
/// `target_group[1].targets[0].weight`, `agent` of `agent.colour`.
pub(super) fn entry_of(path: &str) -> &str {
    path.split('.').next().unwrap_or(path)
}

/// Whether one dotted path is the other or lies within it.
pub(super) fn related(a: &str, b: &str) -> bool {
    let within = |inner: &str, outer: &str| {
        inner == outer
            || inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    };
    within(a, b) || within(b, a)
}

/// The span of the key (not the value) at a dotted path.
pub(super) fn key_span_of(doc: &toml_edit::ImDocument<&str>, path: &str) -> Option<Range<usize>> {
    let segments = segments(path);
    let (Segment::Key(last), parents) = segments.split_last()? else {
        return None;
    };
    let mut item = doc.as_item();
    for segment in parents {
        item = match segment {
            Segment::Key(k) => item.get(*k)?,
            Segment::Index(i) => item.get(*i)?,
        };
    }
    let key = match item {
        toml_edit::Item::Table(t) => t.get_key_value(last)?.0,
        toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => t.get_key_value(last)?.0,
        _ => return None,
    };
    key.span()
}

/// Takes the key at a dotted path out of a document; whether there was one.
pub(super) fn remove_at(doc: &mut toml_edit::DocumentMut, path: &str) -> bool {
    let segments = segments(path);
    let Some((Segment::Key(last), parents)) = segments.split_last() else {
        return false;
    };
    let mut item = doc.as_item_mut();
    for segment in parents {
        let next = match segment {
            Segment::Key(k) => item.get_mut(*k),
            Segment::Index(i) => item.get_mut(*i),
        };
        match next {
            Some(next) => item = next,
            None => return false,
        }
    }
    match item {
        toml_edit::Item::Table(t) => t.remove(last).is_some(),
        toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => t.remove(last).is_some(),
        _ => false,
    }
}

/// The span of the deepest item on `path` that the document has (a defaulted field has no
/// span, so the error points at the table it is missing from).
pub(super) fn span_of(doc: &toml_edit::ImDocument<&str>, path: &str) -> Option<Range<usize>> {
    let mut item = doc.as_item();
    let mut span = None;
    for segment in segments(path) {
        let next = match segment {
            Segment::Key(k) => item.get(k),
            Segment::Index(i) => item.get(i),
        };
        match next {
            Some(next) => {
                item = next;
                if let Some(s) = item.span() {
                    span = Some(s);
                }
            }
            None => break,
        }
    }
    span
}

/// The dotted path of the innermost item at `offset`.
///
/// A `[table]` section's keys follow its header, and a section can come anywhere after its
/// parent's (`[[target_group]]` ... `[target_group.health_check]`), so the section holding
/// `offset` is the one whose header starts last before it, at any depth. Inside it, values
/// (inline tables, arrays) carry spans, so the rest of the way is by containment.
fn path_at(doc: &toml_edit::ImDocument<&str>, offset: usize) -> String {
    fn sections<'a>(
        table: &'a toml_edit::Table,
        path: &str,
        out: &mut Vec<(usize, String, &'a toml_edit::Table)>,
    ) {
        for (key, item) in table.iter() {
            let at = if path.is_empty() {
                key.to_owned()
            } else {
                format!("{path}.{key}")
            };
            match item {
                toml_edit::Item::Table(t) => {
                    if let Some(span) = t.span() {
                        out.push((span.start, at.clone(), t));
                    }
                    sections(t, &at, out);
                }
                toml_edit::Item::ArrayOfTables(a) => {
                    for (i, t) in a.iter().enumerate() {
                        let at = format!("{at}[{i}]");
                        if let Some(span) = t.span() {
                            out.push((span.start, at.clone(), t));
                        }
                        sections(t, &at, out);
                    }
                }
                _ => {}
            }
        }
    }
    fn within_value(value: &toml_edit::Value, offset: usize, path: &mut String) {
        match value {
            toml_edit::Value::InlineTable(t) => {
                for (key, v) in t.iter() {
                    if v.span().is_some_and(|s| s.contains(&offset)) {
                        path.push('.');
                        path.push_str(key);
                        return within_value(v, offset, path);
                    }
                }
            }
            toml_edit::Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    if v.span().is_some_and(|s| s.contains(&offset)) {
                        path.push_str(&format!("[{i}]"));
                        return within_value(v, offset, path);
                    }
                }
            }
            _ => {}
        }
    }
    fn within_table(table: &toml_edit::Table, offset: usize, path: &mut String) {
        for (key, item) in table.iter() {
            match item {
                toml_edit::Item::Value(v) if v.span().is_some_and(|s| s.contains(&offset)) => {
                    path.push('.');
                    path.push_str(key);
                    return within_value(v, offset, path);
                }
                // `a.b = 1` makes a dotted table with no header: its values are in this section.
                toml_edit::Item::Table(t) if t.is_dotted() => {
                    let before = path.len();
                    path.push('.');
                    path.push_str(key);
                    let marked = path.len();
                    within_table(t, offset, path);
                    if path.len() > marked {
                        return;
                    }
                    path.truncate(before);
                }
                _ => {}
            }
        }
    }
    let root = doc.as_table();
    let mut all = Vec::new();
    sections(root, "", &mut all);
    let (mut path, table) = all
        .into_iter()
        .filter(|(start, ..)| *start <= offset)
        .max_by_key(|(start, ..)| *start)
        .map_or((String::new(), root), |(_, path, table)| (path, table));
    within_table(table, offset, &mut path);
    path.trim_start_matches('.').to_owned()
}

/// The name inside the first pair of backticks of a serde message (`unknown field `x`, ...`).
fn quoted_name(message: &str) -> Option<&str> {
    let (_, rest) = message.split_once('`')?;
    let (name, _) = rest.split_once('`')?;
    Some(name)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::ConfigErrors;
    use crate::config::{
        Config,
        fixture::{ConfigFile, errors, fields},
    };

    #[test]
    fn unknown_fields_wrong_types_and_semantic_errors_are_reported_together() {
        let e = ConfigFile::good()
            .set("agent", "colour", r#""blue""#)
            .set("target_group[0]", "port", r#""8080""#)
            .set("listener[0]", "protocl", r#""tcp""#)
            .listener("api", 81, "tcp", r#""nope""#)
            .errors();
        let got: Vec<(usize, &str)> = e.iter().map(|e| (e.line, e.field.as_str())).collect();
        assert_eq!(
            got,
            [
                (4, "agent.colour"),
                (9, "target_group[0].port"),
                (18, "listener[0].protocl"),
                (25, "listener[1].default_action.forward"),
            ],
            "{}",
            ConfigErrors(e.clone())
        );
        assert!(e[0].message.contains("unknown field"), "{}", e[0]);
        assert!(e[1].message.contains("expected u16"), "{}", e[1]);
        assert!(
            e[3].message.contains("no target group named `nope`"),
            "{}",
            e[3]
        );
    }

    #[test]
    fn unknown_field_names_file_line_column_and_field() {
        let e = ConfigFile::good()
            .set("target_group[0]", "prot", "1")
            .errors();
        assert_eq!(e.len(), 1, "{e:?}");
        let e = &e[0];
        assert_eq!(
            (e.file.as_str(), e.line, e.column, e.field.as_str()),
            ("t.toml", 10, 1, "target_group[0].prot"),
            "{e}"
        );
        assert!(e.message.contains("unknown field `prot`"), "{e}");
        assert!(e.message.contains("`port`"), "lists accepted fields: {e}");
        assert!(
            e.to_string()
                .starts_with("t.toml:10:1: target_group[0].prot: ")
        );

        // Inside an inline table: the column of the key.
        let e = &ConfigFile::good()
            .set(
                "target_group[0]",
                "targets",
                r#"[{ address = "198.18.0.21" }, { address = "198.18.0.22", wieght = 2 }]"#,
            )
            .errors()[0];
        assert_eq!(
            (e.line, e.column, e.field.as_str()),
            (9, 68, "target_group[0].targets[1].wieght"),
            "{e}"
        );
    }

    #[test]
    fn missing_field_is_named() {
        let e = &ConfigFile::good().without("listener[0]", "port").errors()[0];
        assert_eq!(e.field, "listener[0].port", "{e}");
        assert!(e.message.contains("missing field `port`"), "{e}");
    }

    #[test]
    fn wrong_type_is_located() {
        let e = ConfigFile::good()
            .set("listener[0]", "port", r#""eighty""#)
            .errors();
        assert_eq!(e.len(), 1, "{e:?}");
        let e = &e[0];
        assert_eq!((e.line, e.column), (14, 8), "{e}");
        assert_eq!(e.field, "listener[0].port", "{e}");
        assert!(e.message.contains("expected u16"), "{e}");

        let e = &ConfigFile::good()
            .set("listener[0]", "protocol", r#""sctp""#)
            .errors()[0];
        assert_eq!(e.field, "listener[0].protocol", "{e}");
        assert!(
            e.message.contains("`tcp_udp`"),
            "lists accepted values: {e}"
        );

        let e = &ConfigFile::good()
            .set("listener[0]", "default_action", "{ forward = 3 }")
            .errors()[0];
        assert_eq!(e.field, "listener[0].default_action.forward", "{e}");
        assert!(e.message.contains("target group name"), "{e}");
    }

    #[test]
    fn syntax_error_is_located() {
        let e = errors(
            r#"
[agent
snat_addresses = ["198.18.0.1"]
"#,
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(
            (e[0].line, e[0].field.as_str()),
            (2, "(syntax)"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn forward_to_a_missing_group_points_at_the_forward() {
        let e = ConfigFile::good()
            .set("listener[0]", "default_action", r#"{ forward = "nope" }"#)
            .errors();
        assert_eq!(e.len(), 1, "{e:?}");
        let e = &e[0];
        assert_eq!(
            (e.line, e.column, e.field.as_str()),
            (16, 30, "listener[0].default_action.forward"),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "t.toml:16:30: listener[0].default_action.forward: \
             no target group named `nope` (groups: web)"
        );
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let e = ConfigFile::good()
            .set("agent", "maglev_table_size", "65536")
            .set("agent", "snat_port_range", "[40000, 2000]")
            .set(
                "target_group[0]",
                "targets",
                r#"[{ address = "198.18.0.21" }, { address = "198.18.0.22", weight = 2000 }]"#,
            )
            .listener("web", 80, "tcp_udp", r#""web""#)
            .errors();
        let got = fields(&e);
        assert_eq!(
            got,
            [
                "agent.maglev_table_size",
                "agent.snat_port_range",
                "target_group[0].targets[1].weight",
                "listener[1].name",
                "listener[1].port",
                "listener[1].default_action.forward",
            ],
            "{e:?}"
        );
        // In file order, one per line.
        assert!(e.windows(2).all(|w| w[0].line <= w[1].line), "{e:?}");
        let shown = ConfigErrors(e).to_string();
        assert_eq!(shown.lines().count(), 6, "{shown}");
        assert!(shown.contains("overlaps"), "{shown}");
        assert!(shown.contains("needs a tcp_udp group"), "{shown}");
    }

    #[test]
    fn sub_table_errors_name_the_entry() {
        // `[target_group.health_check]` belongs to the last `[[target_group]]` above it.
        let e = ConfigFile::good()
            .table("target_group[0].health_check", &[("intervl", r#""5s""#)])
            .errors();
        assert_eq!(
            (e[0].field.as_str(), e[0].line, e[0].column),
            ("target_group[0].health_check.intervl", 12, 1),
            "{}",
            e[0]
        );
    }

    #[test]
    fn unreadable_file_has_no_position() {
        let e = Config::load(Path::new("/nonexistent/lb.toml")).expect_err("no such file");
        assert_eq!(e.0.len(), 1);
        assert!(
            e.to_string()
                .starts_with("/nonexistent/lb.toml: (file): cannot read"),
            "{e}"
        );
    }
}
