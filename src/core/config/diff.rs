//! Unified diffs between two versions' files, as an admin reads them before and after a change.

use similar::TextDiff;

use crate::core::domain::ConfigMap;

/// A unified diff of every file that differs between `old` and `new`, labelled `old_label/file`
/// and `new_label/file`; a file only one side has is diffed against nothing. Empty when the
/// files are the same.
pub fn diff_files(old_label: &str, old: &ConfigMap, new_label: &str, new: &ConfigMap) -> String {
    let names: std::collections::BTreeSet<&String> =
        old.files.keys().chain(new.files.keys()).collect();
    let mut out = String::new();
    for name in names {
        let text = |map: &ConfigMap| {
            map.files
                .get(name)
                .map(|f| String::from_utf8_lossy(&f.body).into_owned())
                .unwrap_or_default()
        };
        let (before, after) = (text(old), text(new));
        if before == after {
            continue;
        }
        let diff = TextDiff::from_lines(&before, &after);
        let old_header = format!("{old_label}/{name}");
        let new_header = format!("{new_label}/{name}");
        let unified = diff
            .unified_diff()
            .context_radius(3)
            .header(&old_header, &new_header)
            .missing_newline_hint(true)
            .to_string();
        out.push_str(&unified);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;

    use super::*;
    use crate::core::domain::ConfigFile;

    fn files(entries: &[(&str, &'static str)]) -> ConfigMap {
        ConfigMap {
            files: entries
                .iter()
                .map(|(name, body)| {
                    let file = ConfigFile {
                        body: Bytes::from_static(body.as_bytes()),
                        content_type: "text/yaml".into(),
                    };
                    (name.to_string(), file)
                })
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn only_files_that_differ_are_shown_with_their_version_labels() {
        let v3 = files(&[("a.yaml", "x: 1\ny: 2\n"), ("b.yaml", "same\n")]);
        let v4 = files(&[
            ("a.yaml", "x: 1\ny: 3\n"),
            ("b.yaml", "same\n"),
            ("c.yaml", "new\n"),
        ]);
        let diff = diff_files("prod v3", &v3, "prod v4", &v4);
        assert_eq!(
            diff,
            "--- prod v3/a.yaml\n+++ prod v4/a.yaml\n@@ -1,2 +1,2 @@\n x: 1\n-y: 2\n+y: 3\n\
             --- prod v3/c.yaml\n+++ prod v4/c.yaml\n@@ -0,0 +1 @@\n+new\n"
        );
        assert_eq!(diff_files("a", &v3, "b", &v3), "");
    }
}
