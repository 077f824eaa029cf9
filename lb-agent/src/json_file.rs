//! The small JSON files the agent keeps beside its config (the API's changes, the data plane's
//! ids): read whole, an absent file is the default value, written whole through a new file
//! renamed over the old one, so a crash never leaves half a file.

use std::path::Path;

use serde::{Serialize, de::DeserializeOwned};

/// The value in `path`; the default if there is no such file; why not otherwise.
pub fn load<T: DeserializeOwned + Default>(path: &Path) -> Result<T, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| e.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(e.to_string()),
    }
}

/// Writes `value` to `path` whole.
pub fn save<T: Serialize>(value: &T, path: &Path) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text + "\n")?;
    std::fs::rename(&tmp, path)
}
