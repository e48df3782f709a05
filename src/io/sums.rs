//! Checksum files in the format of Ubuntu's `SHA256SUMS` and `sha256sum`: one
//! `<sha256> *<name>` (binary mode) or `<sha256>  <name>` (text mode) line per file. Read when a
//! download is verified, written with release artifacts.

/// Why a checksum file is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SumsError {
    /// The file is not UTF-8 text.
    #[error("not UTF-8 text")]
    NotText,
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
/// are skipped.
pub fn parse(bytes: &[u8]) -> Result<Vec<(String, String)>, SumsError> {
    let text = std::str::from_utf8(bytes).map_err(|_| SumsError::NotText)?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let bad = || SumsError::Line {
                line: i + 1,
                text: line.to_string(),
            };
            let (hex, rest) = line.trim_end().split_once(' ').ok_or_else(bad)?;
            let hex = hex.to_ascii_lowercase();
            // ' *name' (binary mode, Ubuntu's format) or '  name' (text mode).
            let name = rest.strip_prefix('*').or_else(|| rest.strip_prefix(' '));
            match name {
                Some(name) if is_sha256(&hex) && !name.is_empty() => Ok((name.to_string(), hex)),
                _ => Err(bad()),
            }
        })
        .collect()
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
}
