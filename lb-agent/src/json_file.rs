//! The files the agent writes itself: the small JSON files it keeps beside its config (the
//! API's changes, the data plane's ids), read whole, an absent file being the default value;
//! and the config file when the API replaces it. Every write is whole and durable: a new file
//! beside the old one, synced, renamed over it, and the directory synced, so a crash or a
//! power cut leaves the old file or the new one, never half of one or an empty one; the new
//! file keeps the old one's mode and owner (a config kept 0640 root:lb stays so).

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
};

use serde::{Serialize, de::DeserializeOwned};

/// The value in `path`; the default if there is no such file; why not otherwise.
pub fn load<T: DeserializeOwned + Default>(path: &Path) -> Result<T, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| e.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(e.to_string()),
    }
}

/// Writes `value` to `path` whole (see [`replace`]).
pub fn save<T: Serialize>(value: &T, path: &Path) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    replace(path, (text + "\n").as_bytes())
}

/// Replaces `path` with `contents` durably, keeping its mode and owner (a new file gets the
/// process's default mode).
pub fn replace(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} names no file", path.display())))?;
    let mut tmp_name = name.to_owned();
    tmp_name.push(format!(".{}.new", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let old = match std::fs::metadata(path) {
        Ok(meta) => Some(meta),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let written =
        write_synced(&tmp, contents, old.as_ref()).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename is durable once the directory is.
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Writes a new file at `tmp` with `old`'s mode and owner, and syncs it.
fn write_synced(
    tmp: &Path,
    contents: &[u8],
    old: Option<&std::fs::Metadata>,
) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    if old.is_some() {
        // No wider than the old file's mode while it is written; set exactly below.
        options.mode(0o600);
    }
    let mut file = options.open(tmp)?;
    if let Some(old) = old {
        // Only root may give a file away; an agent that is not root keeps its own files.
        if let Err(e) = std::os::unix::fs::fchown(&file, Some(old.uid()), Some(old.gid()))
            && e.raw_os_error() != Some(libc::EPERM)
        {
            return Err(e);
        }
        file.set_permissions(std::fs::Permissions::from_mode(old.mode() & 0o7777))?;
    }
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("lb-json-file-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    #[test]
    fn a_replaced_file_keeps_its_mode_and_leaves_no_temporary_file() {
        let dir = scratch("mode");
        let path = dir.join("lb.toml");
        std::fs::write(&path, "old").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        replace(&path, b"new").expect("replace");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "new");
        let mode = std::fs::metadata(&path).expect("meta").mode() & 0o7777;
        assert_eq!(mode, 0o640, "{mode:o}");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["lb.toml"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_new_file_is_created_and_saved_values_read_back() {
        let dir = scratch("new");
        let path = dir.join("x.json");
        save(&vec![1, 2, 3], &path).expect("save");
        assert_eq!(load::<Vec<u32>>(&path).expect("load"), [1, 2, 3]);
        assert_eq!(
            load::<Vec<u32>>(&dir.join("absent.json")).expect("absent"),
            Vec::<u32>::new()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
