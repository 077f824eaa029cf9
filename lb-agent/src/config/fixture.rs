//! Config files for tests, built key by key so that each test states the input it means.

use super::{Config, ConfigError, ConfigErrors};

/// A config file as sections of `key = value` lines, rendered in the order they were added
/// with a blank line before each section (so the first header is on line 2). Values are TOML
/// as written: `r#""tcp""#`, `"8080"`, `r#"{ forward = "web" }"#`.
#[derive(Clone, Default)]
pub(crate) struct ConfigFile {
    sections: Vec<Section>,
}

#[derive(Clone)]
struct Section {
    /// The dotted path errors name: `agent`, `target_group[1]`, `target_group[0].health_check`.
    path: String,
    /// As written: `[agent]`, `[[target_group]]`, `[target_group.health_check]`.
    header: String,
    keys: Vec<(String, String)>,
}

impl ConfigFile {
    /// One tcp group `web` with two targets, and a tcp listener `web` forwarding to it:
    ///
    /// ```text
    ///  2 [agent]
    ///  3 snat_addresses = ["198.18.0.1"]
    ///  5 [[target_group]]
    ///  6 name = "web"
    ///  7 protocol = "tcp"
    ///  8 port = 8080
    ///  9 targets = [{ address = "198.18.0.21" }, { address = "198.18.0.22", weight = 2 }]
    /// 11 [[listener]]
    /// 12 name = "web"
    /// 13 address = "198.18.1.100"
    /// 14 port = 80
    /// 15 protocol = "tcp"
    /// 16 default_action = { forward = "web" }
    /// ```
    pub(crate) fn good() -> Self {
        Self::default()
            .table("agent", &[("snat_addresses", r#"["198.18.0.1"]"#)])
            .entry(
                "target_group",
                &[
                    ("name", r#""web""#),
                    ("protocol", r#""tcp""#),
                    ("port", "8080"),
                    (
                        "targets",
                        r#"[{ address = "198.18.0.21" }, { address = "198.18.0.22", weight = 2 }]"#,
                    ),
                ],
            )
            .entry(
                "listener",
                &[
                    ("name", r#""web""#),
                    ("address", r#""198.18.1.100""#),
                    ("port", "80"),
                    ("protocol", r#""tcp""#),
                    ("default_action", r#"{ forward = "web" }"#),
                ],
            )
    }

    /// A tcp listener on 198.18.1.100 added at the end of the file: 7 lines, the first blank
    /// (lines 17-23 after `good()`).
    pub(super) fn listener(self, name: &str, port: u16, protocol: &str, forward: &str) -> Self {
        let (name, port, protocol) = (
            format!("\"{name}\""),
            port.to_string(),
            format!("\"{protocol}\""),
        );
        let action = format!("{{ forward = {forward} }}");
        self.entry(
            "listener",
            &[
                ("name", &name),
                ("address", r#""198.18.1.100""#),
                ("port", &port),
                ("protocol", &protocol),
                ("default_action", &action),
            ],
        )
    }

    /// A table: `agent` at the end of the file, or a sub-table such as
    /// `target_group[0].health_check` right after its entry (and that entry's other sub-tables).
    pub(super) fn table(mut self, path: &str, keys: &[(&str, &str)]) -> Self {
        let header = format!("[{}]", without_indices(path));
        let at = match path.split_once('.') {
            Some((parent, _)) => {
                let last = self
                    .sections
                    .iter()
                    .rposition(|s| s.path == parent || s.path.starts_with(&format!("{parent}.")))
                    .unwrap_or_else(|| panic!("no section {parent} for {path}"));
                last + 1
            }
            None => self.sections.len(),
        };
        self.sections
            .insert(at, Section::new(path.to_owned(), header, keys));
        self
    }

    /// A new entry of an array of tables (`target_group`, `listener`) at the end of the file.
    pub(super) fn entry(mut self, array: &str, keys: &[(&str, &str)]) -> Self {
        let header = format!("[[{array}]]");
        let index = self.sections.iter().filter(|s| s.header == header).count();
        self.sections
            .push(Section::new(format!("{array}[{index}]"), header, keys));
        self
    }

    /// `key = value` in the section at `path`: in its place if the key is there, else last.
    pub(super) fn set(mut self, path: &str, key: &str, value: &str) -> Self {
        let keys = &mut self.section(path).keys;
        match keys.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value.to_owned(),
            None => keys.push((key.to_owned(), value.to_owned())),
        }
        self
    }

    /// The section at `path` without `key`.
    pub(super) fn without(mut self, path: &str, key: &str) -> Self {
        let keys = &mut self.section(path).keys;
        let before = keys.len();
        keys.retain(|(k, _)| k != key);
        assert!(keys.len() < before, "{path} has no {key}");
        self
    }

    /// The file's text.
    pub(crate) fn text(&self) -> String {
        let mut out = String::new();
        for s in &self.sections {
            out.push('\n');
            out.push_str(&s.header);
            out.push('\n');
            for (k, v) in &s.keys {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        out
    }

    /// The config, which must be valid.
    pub(super) fn config(&self) -> Config {
        Config::parse(&self.text(), "t.toml")
            .unwrap_or_else(|e| panic!("refused:\n{e}\n{}", self.text()))
    }

    /// The errors, which there must be.
    pub(super) fn errors(&self) -> Vec<ConfigError> {
        errors(&self.text())
    }

    fn section(&mut self, path: &str) -> &mut Section {
        self.sections
            .iter_mut()
            .find(|s| s.path == path)
            .unwrap_or_else(|| panic!("no section {path}"))
    }
}

impl Section {
    fn new(path: String, header: String, keys: &[(&str, &str)]) -> Self {
        let keys = keys
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Self { path, header, keys }
    }
}

/// `target_group.health_check` of `target_group[0].health_check`.
fn without_indices(path: &str) -> String {
    path.split('.')
        .map(|part| part.split_once('[').map_or(part, |(key, _)| key))
        .collect::<Vec<_>>()
        .join(".")
}

/// The errors of a config text, which must have some.
pub(super) fn errors(text: &str) -> Vec<ConfigError> {
    match Config::parse(text, "t.toml") {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(ConfigErrors(e)) => e,
    }
}

/// The fields errors name, in order.
pub(super) fn fields(errors: &[ConfigError]) -> Vec<&str> {
    errors.iter().map(|e| e.field.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::ConfigFile;

    #[test]
    fn good_is_the_file_its_doc_shows() {
        let want = r#"
[agent]
snat_addresses = ["198.18.0.1"]

[[target_group]]
name = "web"
protocol = "tcp"
port = 8080
targets = [{ address = "198.18.0.21" }, { address = "198.18.0.22", weight = 2 }]

[[listener]]
name = "web"
address = "198.18.1.100"
port = 80
protocol = "tcp"
default_action = { forward = "web" }
"#;
        assert_eq!(ConfigFile::good().text(), want);
    }

    #[test]
    fn keys_set_again_keep_their_line_and_sub_tables_follow_their_entry() {
        let text = ConfigFile::good()
            .set("listener[0]", "port", "81")
            .without("agent", "snat_addresses")
            .entry("target_group", &[("name", r#""b""#)])
            .table("target_group[0].health_check", &[("port", "9")])
            .text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1..3], ["[agent]", ""]);
        assert_eq!(
            lines[8..11],
            ["", "[target_group.health_check]", "port = 9"]
        );
        assert_eq!(lines[15], "port = 81");
        assert_eq!(lines[18..], ["", "[[target_group]]", "name = \"b\""]);
    }
}
