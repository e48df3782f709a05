//! bmaptool's `.bmap` file (formats 1.0 to 2.x): reading one into a [`BlockMap`], and writing a
//! [`BlockMap`] as one (format 2.0, a sha256 per range, the file's own checksum). The model in
//! [`blockmap`](super::blockmap) knows nothing of XML; this module is where the format lives.
//!
//! The reader is a small hand-written one for the handful of elements bmaptool writes (no
//! general XML parser): comments are stripped first, because bmaptool's mention element names.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::image::blockmap::{
    BlockMap, BlockMapError, ChecksumKind, RangeChecksums, SCAN_BUF, SECTOR,
};
use crate::io::{AtPath, PathError};

/// The range checksums of images that share most of their bytes with a base (the nodes of one
/// release): a range none of whose bytes differ from the base's has the same sha256 in every
/// such image, so it is read and hashed once for all of them.
#[derive(Debug, Default)]
pub struct SharedSums {
    known: HashMap<(u64, u64), String>,
    /// The current image's blocks that differ from the base, sorted, and their size.
    changed: Vec<u64>,
    changed_block: u64,
}

impl SharedSums {
    /// The next image differs from the base in `changed` (sorted block numbers) of
    /// `block_size` bytes each.
    pub fn next_image(&mut self, changed: Vec<u64>, block_size: u64) {
        self.changed = changed;
        self.changed_block = block_size.max(1);
    }

    /// Whether all of `r`'s bytes are the base's (never, before [`next_image`](Self::next_image)
    /// said what differs).
    fn unchanged(&self, r: &Range<u64>) -> bool {
        if self.changed_block == 0 {
            return false;
        }
        let first = r.start / self.changed_block;
        let last = r.end.saturating_sub(1) / self.changed_block;
        let at = self.changed.partition_point(|&b| b < first);
        self.changed.get(at).is_none_or(|&b| b > last)
    }
}

/// Write `map` in bmaptool's format 2.0 (XML) with a sha256 per range, read from `image` (named
/// `name` in errors), and the file's own checksum, so `bmaptool copy --bmap` accepts and
/// verifies it.
pub fn write(
    map: &BlockMap,
    image: &mut (impl Read + Seek),
    name: &Path,
    out: &mut dyn Write,
) -> Result<(), BlockMapError> {
    write_shared(map, image, name, out, &mut SharedSums::default())
}

/// [`write`], taking the sha256 of ranges unchanged from the base from `shared` (and adding
/// those it hashes).
pub fn write_shared(
    map: &BlockMap,
    image: &mut (impl Read + Seek),
    name: &Path,
    out: &mut dyn Write,
    shared: &mut SharedSums,
) -> Result<(), BlockMapError> {
    let mut buf = vec![0u8; SCAN_BUF];
    let mut text = String::new();
    let percent = if map.image_size == 0 {
        0.0
    } else {
        map.mapped_bytes() as f64 * 100.0 / map.image_size as f64
    };
    let _ = write!(
        text,
        "<?xml version=\"1.0\" ?>\n\
         <!-- Block map of a disk image, written by pi-image: the blocks a copy needs (partition\n\
         \x20    tables, used filesystem blocks, other non-zero data), as bmaptool reads it. -->\n\
         <bmap version=\"2.0\">\n\
         \x20   <!-- Image size in bytes: {:.1} MiB -->\n\
         \x20   <ImageSize> {} </ImageSize>\n\
         \x20   <!-- Size of a block in bytes -->\n\
         \x20   <BlockSize> {} </BlockSize>\n\
         \x20   <!-- Count of blocks in the image file -->\n\
         \x20   <BlocksCount> {} </BlocksCount>\n\
         \x20   <!-- Count of mapped blocks: {:.1} MiB or {:.1}% -->\n\
         \x20   <MappedBlocksCount> {} </MappedBlocksCount>\n\
         \x20   <!-- Type of checksum used in this file -->\n\
         \x20   <ChecksumType> sha256 </ChecksumType>\n\
         \x20   <!-- The sha256 of this file, computed with this value set to 64 zeros -->\n\
         \x20   <BmapFileChecksum> {} </BmapFileChecksum>\n\
         \x20   <!-- Mapped block ranges, each with the sha256 of its bytes -->\n\
         \x20   <BlockMap>\n",
        map.image_size as f64 / 1048576.0,
        map.image_size,
        map.block_size,
        map.blocks_count(),
        map.mapped_bytes() as f64 / 1048576.0,
        percent,
        map.mapped_blocks(),
        "0".repeat(64),
    );
    for r in &map.ranges {
        let unchanged = shared.unchanged(r);
        let sum = match shared.known.get(&(r.start, r.end)).filter(|_| unchanged) {
            Some(sum) => sum.clone(),
            None => {
                let mut h = ChecksumKind::Sha256.hasher();
                image.seek(SeekFrom::Start(r.start)).at(name)?;
                let mut left = r.end - r.start;
                while left > 0 {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    image.read_exact(&mut buf[..n]).at(name)?;
                    h.update(&buf[..n]);
                    left -= n as u64;
                }
                let sum = h.hex();
                if unchanged {
                    shared.known.insert((r.start, r.end), sum.clone());
                }
                sum
            }
        };
        let first = r.start / map.block_size;
        let last = r.end.div_ceil(map.block_size) - 1;
        let blocks = if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        };
        let _ = writeln!(text, "        <Range chksum=\"{sum}\"> {blocks} </Range>");
    }
    text.push_str("    </BlockMap>\n</bmap>\n");
    let mut h = ChecksumKind::Sha256.hasher();
    h.update(text.as_bytes());
    let text = text.replacen(&"0".repeat(64), &h.hex(), 1);
    out.write_all(text.as_bytes()).map_err(|source| {
        BlockMapError::Io(PathError {
            path: PathBuf::from("<bmap output>"),
            source,
        })
    })
}

/// Parse a `.bmap` file (formats 1.0 to 2.x as bmaptool writes them). The file's own checksum
/// is checked when it has one; range checksums (sha1 or sha256) are kept in
/// [`BlockMap::checksums`] for verification, each range's own (a range without one does not
/// disable the others). `source_name` names the file in errors.
pub fn read(text: &str, source_name: &str) -> Result<BlockMap, BlockMapError> {
    let bad = |reason: String| BlockMapError::Parse {
        source_name: source_name.to_owned(),
        reason,
    };
    let doc = strip_comments(text);
    let root = find_tag(&doc, "bmap", 0).ok_or_else(|| bad("no <bmap> element".into()))?;
    let version =
        attr(root.attrs, "version").ok_or_else(|| bad("<bmap> has no version attribute".into()))?;
    let (major, minor) = version
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
        .ok_or_else(|| bad(format!("version '{version}' is not MAJOR.MINOR")))?;
    if !(1..=2).contains(&major) {
        return Err(bad(format!(
            "format version {version} is not supported (expected 1.x or 2.x)"
        )));
    }
    let number = |name: &str| -> Result<u64, BlockMapError> {
        let t = find_tag(&doc, name, 0)
            .ok_or_else(|| bad(format!("no <{name}> element")))?
            .text
            .trim();
        t.parse()
            .map_err(|_| bad(format!("<{name}> is '{t}', expected a number")))
    };
    let image_size = number("ImageSize")?;
    let block_size = number("BlockSize")?;
    if block_size == 0 || block_size % SECTOR != 0 {
        return Err(bad(format!(
            "<BlockSize> is {block_size}, expected a multiple of 512"
        )));
    }
    let blocks_count = image_size.div_ceil(block_size);
    if let Some(t) = find_tag(&doc, "BlocksCount", 0)
        && t.text.trim().parse::<u64>().ok() != Some(blocks_count)
    {
        return Err(bad(format!(
            "<BlocksCount> is '{}', expected {blocks_count} (<ImageSize> / <BlockSize>)",
            t.text.trim()
        )));
    }
    // Which checksums the version has: none before 1.3, sha1 in 1.3, ChecksumType after.
    let (kind, range_attr, file_elem) = if major == 1 && minor < 3 {
        (None, "", "")
    } else if major == 1 && minor == 3 {
        (Some(ChecksumKind::Sha1), "sha1", "BmapFileSHA1")
    } else {
        let t = find_tag(&doc, "ChecksumType", 0)
            .ok_or_else(|| bad("no <ChecksumType> element".into()))?
            .text
            .trim()
            .to_owned();
        let kind = match t.as_str() {
            "sha1" => ChecksumKind::Sha1,
            "sha256" => ChecksumKind::Sha256,
            _ => {
                return Err(bad(format!(
                    "<ChecksumType> is '{t}', expected sha1 or sha256"
                )));
            }
        };
        (Some(kind), "chksum", "BmapFileChecksum")
    };
    if let Some(kind) = kind
        && let Some(t) = find_tag(&doc, file_elem, 0)
    {
        let expected = t.text.trim().to_owned();
        if expected.len() != kind.hex_len() {
            return Err(bad(format!(
                "<{file_elem}> is '{expected}', expected {} hex digits",
                kind.hex_len()
            )));
        }
        // bmaptool hashes the file with this value replaced by zeros.
        let zeroed = text.replacen(&expected, &"0".repeat(expected.len()), 1);
        let mut h = kind.hasher();
        h.update(zeroed.as_bytes());
        let actual = h.hex();
        if actual != expected.to_ascii_lowercase() {
            return Err(BlockMapError::FileChecksum {
                source_name: source_name.to_owned(),
                element: if file_elem == "BmapFileSHA1" {
                    "BmapFileSHA1"
                } else {
                    "BmapFileChecksum"
                },
                expected,
                actual,
            });
        }
    }
    let list = find_tag(&doc, "BlockMap", 0).ok_or_else(|| bad("no <BlockMap> element".into()))?;
    let mut ranges = Vec::new();
    let mut sums = Vec::new();
    let mut at = 0;
    while let Some(r) = find_tag(list.text, "Range", at) {
        at = r.end;
        let t = r.text.trim();
        let parse = |s: &str| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| bad(format!("<Range> '{t}' is not FIRST-LAST or a block number")))
        };
        let (first, last) = match t.split_once('-') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => (parse(t)?, parse(t)?),
        };
        if first > last || last >= blocks_count {
            return Err(bad(format!(
                "<Range> {t} is outside the image's {blocks_count} blocks"
            )));
        }
        let range = first * block_size..((last + 1) * block_size).min(image_size);
        if ranges
            .last()
            .is_some_and(|p: &Range<u64>| p.end > range.start)
        {
            return Err(bad(format!(
                "<Range> {t} overlaps or precedes the range before it"
            )));
        }
        ranges.push(range);
        if let Some(kind) = kind {
            sums.push(attr(r.attrs, range_attr).map(|s| s.to_ascii_lowercase()));
            if let Some(Some(s)) = sums.last()
                && (s.len() != kind.hex_len() || !s.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(bad(format!(
                    "<Range> {t}: {range_attr}=\"{s}\" is not {} hex digits",
                    kind.hex_len()
                )));
            }
        }
    }
    let map = BlockMap {
        image_size,
        block_size,
        // A range without a checksum leaves only itself unchecked.
        checksums: match kind {
            Some(kind) if sums.iter().any(Option::is_some) => {
                Some(RangeChecksums { kind, hex: sums })
            }
            _ => None,
        },
        ranges,
    };
    if let Some(t) = find_tag(&doc, "MappedBlocksCount", 0) {
        let mapped = map.mapped_blocks();
        if t.text.trim().parse::<u64>().ok() != Some(mapped) {
            return Err(bad(format!(
                "<MappedBlocksCount> is '{}' but the ranges hold {mapped} blocks",
                t.text.trim()
            )));
        }
    }
    Ok(map)
}

/// Everything between `<!--` and `-->` removed (bmaptool's comments mention element names).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("<!--") {
        out.push_str(&rest[..i]);
        rest = match rest[i..].find("-->") {
            Some(j) => &rest[i + j + 3..],
            None => "",
        };
    }
    out.push_str(rest);
    out
}

/// One element found by [`find_tag`].
struct Tag<'a> {
    /// The text between `<name` and `>`.
    attrs: &'a str,
    /// The content between the start and end tags.
    text: &'a str,
    /// Offset just past the end tag.
    end: usize,
}

/// The first `<name ...>...</name>` element at or after byte `from` of `doc`.
fn find_tag<'a>(doc: &'a str, name: &str, from: usize) -> Option<Tag<'a>> {
    let open = format!("<{name}");
    let close = format!("</{name}>");
    let mut at = from;
    loop {
        let i = at + doc.get(at..)?.find(&open)?;
        let after = i + open.len();
        let next = doc[after..].chars().next()?;
        if next == '>' || next.is_whitespace() {
            let gt = after + doc[after..].find('>')?;
            let end = gt + 1 + doc[gt + 1..].find(&close)?;
            return Some(Tag {
                attrs: &doc[after..gt],
                text: &doc[gt + 1..end],
                end: end + close.len(),
            });
        }
        at = after;
    }
}

/// The value of attribute `name="..."` (or single-quoted) in a start tag's attribute text.
fn attr<'a>(attrs: &'a str, name: &str) -> Option<&'a str> {
    let mut rest = attrs;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim();
        let value = rest[eq + 1..].trim_start();
        let quote = value.chars().next()?;
        if quote != '"' && quote != '\'' {
            return None;
        }
        let close = value[1..].find(quote)?;
        if key == name {
            return Some(&value[1..1 + close]);
        }
        rest = &value[close + 2..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two images that differ in one block of the second of three ranges: the second image's
    /// map, written with the checksums the first left in `SharedSums`, is the one written from
    /// scratch, so a range with a changed block is hashed again and the others are not stale.
    #[test]
    fn shared_sums_reuse_only_unchanged_ranges() {
        let block = 4096u64;
        let first: Vec<u8> = (0..64 * block).map(|i| (i % 253) as u8).collect();
        let mut second = first.clone();
        second[(20 * block + 7) as usize] ^= 0xff;
        let map = BlockMap {
            image_size: first.len() as u64,
            block_size: block,
            ranges: vec![0..8 * block, 16 * block..24 * block, 40 * block..48 * block],
            checksums: None,
        };
        let write_with = |bytes: &[u8], shared: &mut SharedSums| {
            let mut out = Vec::new();
            write_shared(
                &map,
                &mut io_cursor(bytes),
                Path::new("x"),
                &mut out,
                shared,
            )
            .unwrap();
            String::from_utf8(out).unwrap()
        };
        let mut shared = SharedSums::default();
        shared.next_image(vec![], block);
        let alone = |bytes: &[u8]| write_with(bytes, &mut SharedSums::default());
        assert_eq!(write_with(&first, &mut shared), alone(&first));
        assert_eq!(shared.known.len(), 3);
        shared.next_image(vec![20], block);
        let reused = write_with(&second, &mut shared);
        assert_eq!(reused, alone(&second));
        assert_ne!(reused, alone(&first));
    }

    fn io_cursor(bytes: &[u8]) -> std::io::Cursor<&[u8]> {
        std::io::Cursor::new(bytes)
    }

    #[test]
    fn attributes_and_elements_are_found() {
        assert_eq!(attr(" a=\"1\" chksum='ab'", "chksum"), Some("ab"));
        let doc = "<x><Range sha1=\"aa\"> 1-2 </Range><RangeX>no</RangeX></x>";
        let t = find_tag(doc, "Range", 0).unwrap();
        assert_eq!(t.text.trim(), "1-2");
        assert!(find_tag(doc, "Range", t.end).is_none());
    }
}
