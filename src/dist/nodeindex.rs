//! The per-node index of a shared-chunk release, `<node>.chunks.json`: the node's image as a list
//! of chunks in `chunks/`, each named by the sha256 of its raw bytes. Written by
//! [`shared`](super::shared), read (and refused unless every field is sound) by
//! [`reader`](super::reader). README "Shared-chunk releases" documents it field by field.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::chunks::{CHUNK_SIZE, Codec};
use crate::io::sums::is_sha256;

/// The `format` of the indexes this pi-image writes and reads.
pub const FORMAT: &str = "pi-image-chunks/1";
/// The directory of a release holding the chunks.
pub const CHUNKS_DIR: &str = "chunks";
/// An index's file name is the node's name followed by this.
pub const INDEX_SUFFIX: &str = ".chunks.json";
/// The largest index file read: far above the ~100 KiB one node's index takes.
pub const MAX_INDEX_BYTES: u64 = 64 << 20;
/// The largest image an index may describe (16 TiB).
pub const MAX_IMAGE_SIZE: u64 = 1 << 44;
/// The largest chunk: the largest cell of the grid.
pub const MAX_CHUNK: u64 = CHUNK_SIZE;

/// One node's image as chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeIndex {
    /// [`FORMAT`].
    pub format: String,
    /// The node.
    pub node: String,
    /// How every chunk is compressed: `xz`, `zstd` or `gz`.
    pub compression: String,
    /// The image's length in bytes.
    pub image_size: u64,
    /// The image's sha256 (hex), when the release was built with `--image-sha256`.
    pub image_sha256: Option<String>,
    /// The chunks, in image order, covering the image exactly.
    pub chunks: Vec<ChunkRef>,
}

/// One chunk of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkRef {
    /// Its first byte in the image.
    pub offset: u64,
    /// Its raw length in bytes.
    pub length: u64,
    /// The sha256 (hex) of its raw bytes; the chunk file is `chunks/<sha256>.<ext>`.
    pub sha256: String,
    /// The chunk file's length in bytes.
    pub stored_length: u64,
    /// The chunk file's sha256 (hex).
    pub stored_sha256: String,
}

/// An index that is not sound: its file, the field, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {field}: {reason}", path.display())]
pub struct IndexError {
    /// The index file.
    pub path: PathBuf,
    /// The field, e.g. `chunks[12].length`.
    pub field: String,
    /// What is wrong and what was expected.
    pub reason: String,
}

impl NodeIndex {
    /// The index file name of `node`.
    pub fn file_name(node: &str) -> String {
        format!("{node}{INDEX_SUFFIX}")
    }

    /// The codec of the chunks.
    pub fn codec(&self) -> Codec {
        // Checked by `parse`; an index made by `shared` always names a codec.
        self.compression.parse().unwrap_or(Codec::Xz)
    }

    /// The path of `chunk`'s file, relative to the release directory.
    pub fn chunk_path(&self, chunk: &ChunkRef) -> PathBuf {
        Path::new(CHUNKS_DIR).join(format!("{}.{}", chunk.sha256, self.codec().extension()))
    }

    /// The index as JSON: the fields one per line, then one line per chunk.
    pub fn to_json(&self) -> String {
        let mut out = String::from("{\n");
        let _ = writeln!(out, "  \"format\": {},", json(&self.format));
        let _ = writeln!(out, "  \"node\": {},", json(&self.node));
        let _ = writeln!(out, "  \"compression\": {},", json(&self.compression));
        let _ = writeln!(out, "  \"image_size\": {},", self.image_size);
        let _ = writeln!(out, "  \"image_sha256\": {},", json(&self.image_sha256));
        out.push_str("  \"chunks\": [\n");
        for (i, c) in self.chunks.iter().enumerate() {
            let comma = if i + 1 < self.chunks.len() { "," } else { "" };
            let _ = writeln!(out, "    {}{comma}", json(c));
        }
        out.push_str("  ]\n}\n");
        out
    }

    /// Parse and check the index text of the file `path`: every chunk within bounds and in
    /// order, together covering exactly `image_size` bytes.
    pub fn parse(text: &str, path: &Path) -> Result<NodeIndex, IndexError> {
        let err = |field: &str, reason: String| IndexError {
            path: path.to_owned(),
            field: field.to_string(),
            reason,
        };
        let index: NodeIndex = serde_json::from_str(text).map_err(|e| {
            err(
                "(syntax)",
                format!("{e} (expected a pi-image chunk index: format, node, compression, image_size, image_sha256, chunks)"),
            )
        })?;
        if index.format != FORMAT {
            return Err(err(
                "format",
                format!(
                    "'{}' is not a format this pi-image reads (expected '{FORMAT}')",
                    index.format
                ),
            ));
        }
        match index.compression.parse::<Codec>() {
            Ok(c) if c.name() == index.compression => {}
            _ => {
                return Err(err(
                    "compression",
                    format!(
                        "'{}' is not a compression (expected xz, zstd or gz)",
                        index.compression
                    ),
                ));
            }
        }
        if index.image_size > MAX_IMAGE_SIZE {
            return Err(err(
                "image_size",
                format!(
                    "{} bytes is more than an image can be here (at most {MAX_IMAGE_SIZE})",
                    index.image_size
                ),
            ));
        }
        if let Some(h) = index.image_sha256.as_ref().filter(|h| !is_sha256(h)) {
            return Err(err(
                "image_sha256",
                format!("'{h}' is not a sha256 (expected 64 lowercase hex digits)"),
            ));
        }
        if index.chunks.is_empty() {
            return Err(err("chunks", "empty (expected at least one chunk)".into()));
        }
        let mut end = 0u64;
        for (i, c) in index.chunks.iter().enumerate() {
            let field = |f: &str| format!("chunks[{i}].{f}");
            if c.offset != end {
                return Err(err(
                    &field("offset"),
                    format!(
                        "{} leaves a gap or an overlap (expected {end}, where the chunk before ends)",
                        c.offset
                    ),
                ));
            }
            let empty_image = index.image_size == 0 && index.chunks.len() == 1;
            if c.length > MAX_CHUNK || (c.length == 0 && !empty_image) {
                return Err(err(
                    &field("length"),
                    format!(
                        "{} is not a chunk length (expected 1 to {MAX_CHUNK} bytes)",
                        c.length
                    ),
                ));
            }
            for (f, h) in [("sha256", &c.sha256), ("stored_sha256", &c.stored_sha256)] {
                if !is_sha256(h) {
                    return Err(err(
                        &field(f),
                        format!("'{h}' is not a sha256 (expected 64 lowercase hex digits)"),
                    ));
                }
            }
            // Compressing never grows data by more than a few bytes per 64 KiB.
            let most = c.length + c.length / 64 + 4096;
            if c.stored_length == 0 || c.stored_length > most {
                return Err(err(
                    &field("stored_length"),
                    format!(
                        "{} bytes does not fit a compressed chunk of {} bytes (expected 1 to {most})",
                        c.stored_length, c.length
                    ),
                ));
            }
            end = c.offset + c.length;
        }
        if end != index.image_size {
            return Err(err(
                "image_size",
                format!(
                    "{} bytes, but the chunks cover {end} (expected the chunks to cover the image exactly)",
                    index.image_size
                ),
            ));
        }
        Ok(index)
    }
}

/// `v` as JSON (strings, options and plain structs always serialize).
fn json(v: &impl Serialize) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NodeIndex {
        let chunk = |offset, length, c: char| ChunkRef {
            offset,
            length,
            sha256: c.to_string().repeat(64),
            stored_length: 100,
            stored_sha256: "f".repeat(64),
        };
        NodeIndex {
            format: FORMAT.into(),
            node: "w017".into(),
            compression: "xz".into(),
            image_size: 3 << 20,
            image_sha256: None,
            chunks: vec![chunk(0, 65536, 'a'), chunk(65536, (3 << 20) - 65536, 'b')],
        }
    }

    #[test]
    fn json_round_trips_one_chunk_per_line() {
        let index = sample();
        let text = index.to_json();
        assert_eq!(text.lines().count(), 11, "{text}");
        assert_eq!(
            NodeIndex::parse(&text, Path::new("w017.chunks.json")),
            Ok(index.clone())
        );
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["chunks"][1]["offset"], 65536);
        assert_eq!(
            index.chunk_path(&index.chunks[0]),
            Path::new(&format!("chunks/{}.xz", "a".repeat(64)))
        );
    }

    #[test]
    fn unsound_indexes_are_refused_naming_the_field() {
        type Breaks = fn(&mut NodeIndex);
        let cases: Vec<(Breaks, &str)> = vec![
            (
                |i| i.format = "pi-image-chunks/2".into(),
                "format: 'pi-image-chunks/2'",
            ),
            (|i| i.compression = "lz4".into(), "compression: 'lz4'"),
            (|i| i.compression = "zst".into(), "compression: 'zst'"),
            (|i| i.image_size = 1 << 50, "image_size"),
            (
                |i| i.image_size += 1,
                "image_size: 3145729 bytes, but the chunks cover 3145728",
            ),
            (
                |i| i.image_sha256 = Some("ABC".into()),
                "image_sha256: 'ABC'",
            ),
            (|i| i.chunks.clear(), "chunks: empty"),
            (
                |i| i.chunks[1].offset = 1,
                "chunks[1].offset: 1 leaves a gap",
            ),
            (
                |i| i.chunks[0].length = 0,
                "chunks[0].length: 0 is not a chunk length",
            ),
            (
                |i| i.chunks[1].length = 64 << 20,
                "chunks[1].length: 67108864 is not a chunk length",
            ),
            (
                |i| i.chunks[0].sha256 = "../../etc/passwd".into(),
                "chunks[0].sha256: '../../etc/passwd' is not a sha256",
            ),
            (
                |i| i.chunks[1].stored_sha256 = "g".repeat(64),
                "chunks[1].stored_sha256",
            ),
            (
                |i| i.chunks[0].stored_length = 1 << 30,
                "chunks[0].stored_length: 1073741824 bytes does not fit",
            ),
        ];
        for (break_it, says) in cases {
            let mut index = sample();
            break_it(&mut index);
            let err =
                NodeIndex::parse(&index.to_json(), Path::new("d/w017.chunks.json")).unwrap_err();
            assert!(
                err.to_string().starts_with("d/w017.chunks.json: ")
                    && err.to_string().contains(says),
                "{err} (expected {says})"
            );
        }
        let err = NodeIndex::parse("{\"format\": 1}", Path::new("x")).unwrap_err();
        assert_eq!(err.field, "(syntax)");
        let extra = sample()
            .to_json()
            .replacen("\"node\"", "\"url\": \"http://x\", \"node\"", 1);
        assert!(
            NodeIndex::parse(&extra, Path::new("x"))
                .unwrap_err()
                .reason
                .contains("unknown field")
        );
    }
}
