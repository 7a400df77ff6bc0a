//! Expanding the path patterns users pass for shards and files: plain paths, globs
//! (`shards/*.tar`) and brace expressions (`shards/{00000..00099}.tar`, `{train,val}.csv`).

use std::path::PathBuf;

use crate::error::{DataError, PatternError};

/// Most paths one brace expression may expand to; more is almost certainly a typo.
const MAX_BRACE_EXPANSION: usize = 1_000_000;

/// Expands each pattern into the paths it names, sorted and de-duplicated per pattern, in the
/// order of the patterns.
///
/// Brace expressions are expanded first: `{a,b}` lists alternatives and `{00000..00099}` is an
/// inclusive numeric range, zero-padded to the width of its first bound when that bound has a
/// leading zero. A result that contains a glob character (`*`, `?`, `[`) is then globbed.
/// Fails with [`DataError::NoMatch`] when a pattern matches nothing, and also when a
/// brace-expanded path without glob characters does not exist (a shard missing from an
/// explicit range), so that nothing is read from an incomplete list.
pub fn expand_paths(patterns: &[impl AsRef<str>]) -> Result<Vec<PathBuf>, DataError> {
    let mut all = Vec::new();
    for pattern in patterns {
        let pattern = pattern.as_ref();
        let expanded = expand_braces(pattern).map_err(|problem| DataError::BadPattern {
            pattern: pattern.into(),
            problem,
        })?;
        let has_braces = expanded.len() > 1 || expanded.first().is_some_and(|p| p != pattern);
        let mut found = Vec::new();
        for candidate in expanded {
            if candidate.contains(['*', '?', '[']) {
                let paths = glob::glob(&candidate).map_err(|e| DataError::BadPattern {
                    pattern: pattern.into(),
                    problem: e.into(),
                })?;
                for entry in paths {
                    let path = entry.map_err(|e| {
                        let path = e.path().to_path_buf();
                        DataError::io(path, e.into())
                    })?;
                    found.push(path);
                }
            } else {
                let path = PathBuf::from(&candidate);
                if path.exists() {
                    found.push(path);
                } else if has_braces {
                    return Err(DataError::NoMatch {
                        pattern: format!("{candidate} (from {pattern})"),
                    });
                }
            }
        }
        if found.is_empty() {
            return Err(DataError::NoMatch {
                pattern: pattern.into(),
            });
        }
        found.sort();
        found.dedup();
        all.extend(found);
    }
    Ok(all)
}

/// Expands every brace expression of `pattern`; a pattern without braces expands to itself.
fn expand_braces(pattern: &str) -> Result<Vec<String>, PatternError> {
    let Some(open) = pattern.find('{') else {
        if pattern.contains('}') {
            return Err(PatternError::UnmatchedClose);
        }
        return Ok(vec![pattern.to_owned()]);
    };
    let mut depth = 0usize;
    let mut close = None;
    for (i, c) in pattern[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    close = Some(open + i);
                    break;
                }
            }
            _ => {}
        }
    }
    let close = close.ok_or(PatternError::UnmatchedOpen)?;
    let (prefix, body, suffix) = (
        &pattern[..open],
        &pattern[open + 1..close],
        &pattern[close + 1..],
    );
    let alternatives = brace_alternatives(body)?;
    let suffixes = expand_braces(suffix)?;
    const TOO_MANY: PatternError = PatternError::TooManyPaths {
        limit: MAX_BRACE_EXPANSION,
    };
    if alternatives.len().saturating_mul(suffixes.len()) > MAX_BRACE_EXPANSION {
        return Err(TOO_MANY);
    }
    let mut out = Vec::new();
    for alternative in alternatives {
        for expanded in expand_braces(&alternative)? {
            for suffix in &suffixes {
                out.push(format!("{prefix}{expanded}{suffix}"));
                if out.len() > MAX_BRACE_EXPANSION {
                    return Err(TOO_MANY);
                }
            }
        }
    }
    Ok(out)
}

/// The alternatives of one brace body: a numeric range `a..b` or a comma list (nested braces
/// are kept for the caller to expand).
fn brace_alternatives(body: &str) -> Result<Vec<String>, PatternError> {
    if let Some((start, end)) = body.split_once("..").filter(|_| !body.contains(',')) {
        let is_number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !is_number(start) || !is_number(end) {
            return Err(PatternError::BadRange { body: body.into() });
        }
        let parse = |s: &str| {
            s.parse::<u64>().map_err(|source| PatternError::BadBound {
                bound: s.into(),
                source,
            })
        };
        let (a, b) = (parse(start)?, parse(end)?);
        let (low, high) = (a.min(b), a.max(b));
        if high - low >= MAX_BRACE_EXPANSION as u64 {
            return Err(PatternError::RangeTooLong {
                body: body.into(),
                limit: MAX_BRACE_EXPANSION,
            });
        }
        let width = if start.len() > 1 && start.starts_with('0') {
            start.len()
        } else {
            0
        };
        return Ok((low..=high).map(|n| format!("{n:0width$}")).collect());
    }
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut current = String::new();
    for c in body.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current);
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &std::path::Path, names: &[&str]) {
        for name in names {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        }
    }

    fn names(paths: &[PathBuf]) -> Vec<String> {
        paths
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn readers_brace_ranges_are_inclusive_and_zero_padded() {
        assert_eq!(
            expand_braces("s/{0008..0011}.tar").unwrap(),
            ["s/0008.tar", "s/0009.tar", "s/0010.tar", "s/0011.tar"]
        );
        assert_eq!(expand_braces("{9..10}").unwrap(), ["9", "10"]);
        assert_eq!(
            expand_braces("{a,b}-{1..2}").unwrap(),
            ["a-1", "a-2", "b-1", "b-2"]
        );
        assert_eq!(expand_braces("{x,{y,z}}").unwrap(), ["x", "y", "z"]);
        assert_eq!(expand_braces("plain").unwrap(), ["plain"]);
        assert_eq!(
            expand_braces("{1..a}"),
            Err(PatternError::BadRange {
                body: "1..a".into()
            })
        );
        assert_eq!(expand_braces("{1..2"), Err(PatternError::UnmatchedOpen));
        assert_eq!(expand_braces("a}"), Err(PatternError::UnmatchedClose));
        let too_long = expand_braces("{0..99999999}").unwrap_err();
        assert_eq!(
            too_long.to_string(),
            format!("`{{0..99999999}}` expands to more than {MAX_BRACE_EXPANSION} paths")
        );
        assert_eq!(
            expand_braces("{0..999}{0..999}{0..9}"),
            Err(PatternError::TooManyPaths {
                limit: MAX_BRACE_EXPANSION
            })
        );
        let huge = expand_braces("{0..99999999999999999999}").unwrap_err();
        assert!(
            matches!(&huge, PatternError::BadBound { bound, .. } if bound == "99999999999999999999"),
            "{huge}"
        );
    }

    #[test]
    fn readers_expand_paths_globs_ranges_and_plain_files() {
        let dir = tempfile::tempdir().unwrap();
        touch(
            dir.path(),
            &[
                "00000.tar",
                "00001.tar",
                "00002.tar",
                "00010.tar",
                "notes.txt",
            ],
        );
        let d = dir.path().display();
        let paths = expand_paths(&[format!("{d}/*.tar")]).unwrap();
        assert_eq!(
            names(&paths),
            ["00000.tar", "00001.tar", "00002.tar", "00010.tar"]
        );
        let paths = expand_paths(&[format!("{d}/{{00000..00002}}.tar")]).unwrap();
        assert_eq!(names(&paths), ["00000.tar", "00001.tar", "00002.tar"]);
        // Pattern order is kept; each pattern is sorted and de-duplicated on its own.
        let paths = expand_paths(&[
            format!("{d}/notes.txt"),
            format!("{d}/{{00002,00000,00000}}.tar"),
        ])
        .unwrap();
        assert_eq!(names(&paths), ["notes.txt", "00000.tar", "00002.tar"]);
        let paths = expand_paths(&[format!("{d}/0000[01].tar")]).unwrap();
        assert_eq!(names(&paths), ["00000.tar", "00001.tar"]);
    }

    #[test]
    fn readers_expand_paths_reports_the_pattern_that_matched_nothing() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), &["00000.tar"]);
        let d = dir.path().display();
        let pattern = format!("{d}/*.zip");
        let err = expand_paths(&[format!("{d}/00000.tar"), pattern.clone()]).unwrap_err();
        assert!(
            matches!(&err, DataError::NoMatch { pattern: p } if *p == pattern),
            "{err}"
        );
        assert!(err.to_string().contains(&pattern), "{err}");
        let err = expand_paths(&[format!("{d}/missing.tar")]).unwrap_err();
        assert!(err.to_string().contains("missing.tar"), "{err}");
        // A range with a hole names the missing shard.
        let err = expand_paths(&[format!("{d}/{{00000..00001}}.tar")]).unwrap_err();
        assert!(err.to_string().contains("00001.tar"), "{err}");
        let err = expand_paths(&[format!("{d}/{{0..x}}.tar")]).unwrap_err();
        assert!(matches!(err, DataError::BadPattern { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("`{0..x}`: a range needs two non-negative integers"),
            "{err}"
        );
        let err = expand_paths(&[format!("{d}/[.tar")]).unwrap_err();
        assert!(
            matches!(
                &err,
                DataError::BadPattern {
                    problem: PatternError::Glob { .. },
                    ..
                }
            ),
            "{err}"
        );
    }
}
