//! Where device profiles come from (PRODUCT.md, "Device profiles"; docs/PROFILES.md): the
//! built-in ones (the files under `profiles/` in the source tree, compiled into the binary)
//! and `NAME.toml` files in `[agent] profiles_dir`, which add a profile or replace a built-in
//! one. Validation of a profile and its points is in `config/validate/profile.rs`; this module
//! only finds the texts.

use std::collections::BTreeMap;
use std::path::Path;

/// The built-in profiles: name and TOML text.
pub const BUILTIN: &[(&str, &str)] = &[
    ("ur", include_str!("../../profiles/ur.toml")),
    ("ur-rtde", include_str!("../../profiles/ur-rtde.toml")),
    (
        "cia402-statusword",
        include_str!("../../profiles/cia402-statusword.toml"),
    ),
    ("delta-asda", include_str!("../../profiles/delta-asda.toml")),
    (
        "inovance-sv660",
        include_str!("../../profiles/inovance-sv660.toml"),
    ),
    (
        "leadshine-eld2",
        include_str!("../../profiles/leadshine-eld2.toml"),
    ),
    (
        "plc-mapped-robot",
        include_str!("../../profiles/plc-mapped-robot.toml"),
    ),
    (
        "opcua-robotics",
        include_str!("../../profiles/opcua-robotics.toml"),
    ),
];

/// One profile's text and where it came from.
#[derive(Debug, Clone)]
pub struct ProfileText {
    pub name: String,
    /// How errors name it: the file's path, or `built-in:NAME.toml`.
    pub file: String,
    pub text: String,
    pub builtin: bool,
}

/// Every profile available: the built-in ones, then the files of `dir` (which replace a
/// built-in profile of the same name). A file that cannot be read is an error (file, message).
pub fn available(dir: Option<&Path>) -> (BTreeMap<String, ProfileText>, Vec<(String, String)>) {
    let mut out: BTreeMap<String, ProfileText> = BUILTIN
        .iter()
        .map(|(name, text)| {
            (
                name.to_string(),
                ProfileText {
                    name: name.to_string(),
                    file: format!("built-in:{name}.toml"),
                    text: text.to_string(),
                    builtin: true,
                },
            )
        })
        .collect();
    let mut errors = Vec::new();
    let Some(dir) = dir else {
        return (out, errors);
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        // No profiles directory: the built-in profiles only.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (out, errors),
        Err(e) => {
            errors.push((
                dir.display().to_string(),
                format!("cannot list profiles: {e}"),
            ));
            return (out, errors);
        }
    };
    let mut paths: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    for path in paths {
        let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                out.insert(
                    name.to_string(),
                    ProfileText {
                        name: name.to_string(),
                        file: path.display().to_string(),
                        text,
                        builtin: false,
                    },
                );
            }
            Err(e) => errors.push((path.display().to_string(), format!("cannot read: {e}"))),
        }
    }
    (out, errors)
}

/// The `[profile]` header fields `linetap profiles` shows, read leniently (a broken file
/// still lists, with its error shown by `check`).
pub fn summary(p: &ProfileText) -> (String, String, String) {
    #[derive(serde::Deserialize, Default)]
    struct Header {
        kind: Option<String>,
        description: Option<String>,
        source: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct File {
        profile: Option<Header>,
    }
    let h = toml::from_str::<toml::Table>(&p.text)
        .ok()
        .and_then(|t| toml::Value::Table(t).try_into::<File>().ok())
        .and_then(|f| f.profile)
        .unwrap_or_default();
    (
        h.kind.unwrap_or_default(),
        h.description.unwrap_or_default(),
        h.source.unwrap_or_default(),
    )
}
