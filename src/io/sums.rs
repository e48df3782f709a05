//! Checksum files in the format of Ubuntu's `SHA256SUMS` and `sha256sum`: one
//! `<sha256> *<name>` (binary mode) or `<sha256>  <name>` (text mode) line per file. Read when a
//! download is verified, written with release artifacts.

/// Why a checksum file is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SumsError {
    /// The file is not UTF-8 text.
    #[error("not UTF-8 text")]
    NotText,
    /// A file is listed twice with different sums: which one is meant cannot be known.
    #[error("line {line}: {name} is listed again with a different sha256 (first on line {first})")]
    Duplicate {
        /// 1-based line number of the second listing.
        line: usize,
        /// 1-based line number of the first.
        first: usize,
        /// The file name.
        name: String,
    },
    /// A line is not `<sha256> *<name>`.
    #[error("line {line}: '{text}' is not a checksum line (expected '<64 hex digits> *<file>')")]
    Line {
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
}

/// True for 64 lowercase hex digits.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// The (name, sha256) pairs of a checksum file, in file order; sha256s lowercased. Blank lines
/// are skipped, and a name listed again with the same sum is kept once; listed with another sum
/// it is an error.
pub fn parse(bytes: &[u8]) -> Result<Vec<(String, String)>, SumsError> {
    let text = std::str::from_utf8(bytes).map_err(|_| SumsError::NotText)?;
    let mut out: Vec<(String, String)> = Vec::new();
    let mut seen: std::collections::HashMap<String, (usize, String)> = Default::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || SumsError::Line {
            line: i + 1,
            text: line.to_string(),
        };
        let (hex, rest) = line.trim_end().split_once(' ').ok_or_else(bad)?;
        let hex = hex.to_ascii_lowercase();
        // ' *name' (binary mode, Ubuntu's format) or '  name' (text mode).
        let name = match rest.strip_prefix('*').or_else(|| rest.strip_prefix(' ')) {
            Some(name) if is_sha256(&hex) && !name.is_empty() => name.to_string(),
            _ => return Err(bad()),
        };
        match seen.get(&name) {
            Some((_, sha)) if *sha == hex => {}
            Some(&(first, _)) => {
                return Err(SumsError::Duplicate {
                    line: i + 1,
                    first,
                    name,
                });
            }
            None => {
                seen.insert(name.clone(), (i + 1, hex.clone()));
                out.push((name, hex));
            }
        }
    }
    Ok(out)
}

/// The line for `name` with `sha256`, binary mode, as Ubuntu writes it.
pub fn line(sha256: &str, name: &str) -> String {
    format!("{sha256} *{name}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_text_mode_lines() {
        let a = "a".repeat(64);
        let b = "B".repeat(64);
        let sums = format!("{a} *one.img.xz\n\n{b}  two.img.xz\n");
        assert_eq!(
            parse(sums.as_bytes()).unwrap(),
            vec![
                ("one.img.xz".to_string(), a.clone()),
                ("two.img.xz".to_string(), "b".repeat(64))
            ]
        );
        assert_eq!(line(&a, "x"), format!("{a} *x\n"));
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "<html>not found</html>",
            "abc *x",
            &format!("{} x", "a".repeat(64)),
            &format!("{} *", "a".repeat(64)),
        ] {
            assert!(
                matches!(parse(bad.as_bytes()), Err(SumsError::Line { line: 1, .. })),
                "{bad}"
            );
        }
        assert_eq!(parse(&[0xff]), Err(SumsError::NotText));
    }

    #[test]
    fn a_name_listed_twice_with_different_sums_is_an_error() {
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let twice = format!("{a} *x.img.xz\n{a} *x.img.xz\n");
        assert_eq!(parse(twice.as_bytes()).unwrap().len(), 1);
        let clash = format!("{a} *x.img.xz\n{b} *y\n{b} *x.img.xz\n");
        assert_eq!(
            parse(clash.as_bytes()),
            Err(SumsError::Duplicate {
                line: 3,
                first: 1,
                name: "x.img.xz".into()
            })
        );
    }
}
