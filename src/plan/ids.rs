//! A node's identities on disk: its MBR disk identifier and its GPT GUIDs, derived from the
//! cluster and node names so that rebuilding gives the same ids and no two nodes share one.

use sha2::{Digest, Sha256};

/// A GUID, its 16 bytes in the order it is written as text (`0fc63daf-8483-...`). On disk, GPT
/// stores the first three fields little-endian ([`Guid::to_disk`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// The mixed-endian on-disk form: first three fields little-endian, the rest as written.
    pub fn to_disk(self) -> [u8; 16] {
        let b = self.0;
        [
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
            b[14], b[15],
        ]
    }
}

impl std::fmt::Display for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// The node's MBR disk identifier: derived from the cluster and node names, so rebuilding gives
/// the same id and no two nodes (or an SD card and an SSD of different nodes) share one.
pub fn disk_id(cluster: &str, node: &str) -> u32 {
    let digest = Sha256::digest(format!("pi-image disk id\0{cluster}\0{node}"));
    let id = u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]);
    // 0 means "no identifier" to some tools.
    if id == 0 { 1 } else { id }
}

/// A GUID derived from the cluster and node names and what it identifies (`disk`,
/// `partition 2`): stable across rebuilds, unique per node. RFC 9562 version 8 (custom), the
/// layout for name-based GUIDs from SHA-256.
pub fn gpt_guid(cluster: &str, node: &str, what: &str) -> Guid {
    let digest = Sha256::digest(format!("pi-image gpt guid\0{cluster}\0{node}\0{what}"));
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x80; // version 8
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122/9562 variant
    Guid(b)
}

/// The GPT disk GUID of a node's image.
pub fn gpt_disk_guid(cluster: &str, node: &str) -> Guid {
    gpt_guid(cluster, node, "disk")
}

/// The GPT unique partition GUID of partition `number` (1-based) of a node's image.
pub fn gpt_partition_guid(cluster: &str, node: &str, number: u32) -> Guid {
    gpt_guid(cluster, node, &format!("partition {number}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_ids_are_stable_and_differ_between_nodes_and_clusters() {
        assert_eq!(disk_id("c", "pi1"), disk_id("c", "pi1"));
        assert_ne!(disk_id("c", "pi1"), disk_id("c", "pi2"));
        assert_ne!(disk_id("c", "pi1"), disk_id("d", "pi1"));
    }
}
