//! A small reader of kernel BTF, just enough to compute the byte offsets of
//! the struct members the eBPF programs read with `bpf_probe_read_kernel`.
//!
//! The programs follow `sk_buff.dev` (TC) or `xdp_buff.rxq->dev` (XDP) to the
//! uplink's `struct net_device` and read its `state`, `flags` and `ifindex`.
//! Those offsets differ between kernels and configurations, so the agent
//! computes them at load time from the running kernel's BTF
//! ([`VMLINUX`]) and hands them to the programs as globals; they are never
//! hard-coded.
//!
//! # Why our own parser
//!
//! The crates on crates.io were checked first:
//! - `btf-rs` walks members, but is LGPL-2.1-or-later (the project is
//!   Apache-2.0 and takes MIT or Apache-2.0 dependencies only);
//! - `btf` (MIT, 0.5) parses only from a file path (no `&[u8]` entry point,
//!   which [`offsets_from`] and the synthetic tests need), keeps one name map
//!   shared by every kind (a typedef or function can shadow the struct of the
//!   same name), flattens every type of vmlinux eagerly and declares no
//!   `rust-version`;
//! - `btfdump` is a BSD-2-Clause dump tool at 0.0.x, `libbpf-rs` is
//!   LGPL-2.1 OR BSD-2-Clause and builds the C libbpf;
//! - `aya-obj` 0.3 (what aya 0.14 uses) parses BTF but keeps struct members
//!   crate-private.
//!
//! The part of the format needed here is small and stable, so it is read
//! here directly (format: the kernel's `Documentation/bpf/btf.rst` and
//! `include/uapi/linux/btf.h`).
//!
//! # What is read
//!
//! - The header: magic `0xeB9F`, version 1, `hdr_len` (at least 24; longer
//!   headers are accepted and their extra fields ignored), then the type and
//!   string sections, whose offsets are relative to the end of the header.
//!   **Little-endian BTF only** (the blob of the running kernel on the
//!   little-endian hosts this agent runs on); big-endian BTF is refused as a
//!   bad magic.
//! - Every kind from INT (1) to ENUM64 (19), so the walk over the type
//!   section always knows how many bytes follow each `struct btf_type` and
//!   never loses its place; a kind it does not know (0, or a kind added by a
//!   later kernel) is an error rather than a guess.
//! - Struct and union members: with the type's `kind_flag` set, a member's
//!   offset holds the bitfield size in bits 24-31 and the bit offset in bits
//!   0-23; without it, the whole word is the bit offset and a bitfield shows
//!   as an INT type whose encoding has fewer bits than its size (or a bit
//!   offset). Bitfields and members not on a byte boundary have no byte
//!   offset and are refused.
//! - Anonymous struct and union members (`sk_buff.dev` sits two levels down,
//!   in a union inside a struct inside a union) are searched recursively,
//!   adding their offsets; typedef/const/volatile/restrict/type-tag wrappers
//!   around them are looked through.
//!
//! # Bounded on bad input
//!
//! Every read is bounds-checked (no panics, no `unsafe`), the walk over the
//! type section moves forward on each type, type chains are followed at most
//! [`MAX_CHAIN`] steps, anonymous members nest at most [`MAX_NESTING`]
//! levels, and each anonymous type is searched at most once per lookup, so a
//! cyclic or exponentially shared blob still ends quickly with an error.

use std::{collections::HashSet, path::PathBuf};

/// Where the running kernel exposes its own BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// `BTF_MAGIC`, as read little-endian.
const MAGIC: u16 = 0xeb9f;
/// `BTF_VERSION`.
const VERSION: u8 = 1;
/// `sizeof(struct btf_header)` in its first version.
const HEADER_LEN: usize = 24;
/// `sizeof(struct btf_type)`.
const TYPE_LEN: usize = 12;
/// `sizeof(struct btf_member)`.
const MEMBER_LEN: usize = 12;
/// How deep anonymous struct/union members may nest inside one another.
pub const MAX_NESTING: usize = 16;
/// How many typedef/const/volatile/restrict/type-tag links are followed.
pub const MAX_CHAIN: usize = 32;

/// BTF kinds (`BTF_KIND_*` of `include/uapi/linux/btf.h`).
mod kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FWD: u32 = 7;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const FLOAT: u32 = 16;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

/// Byte offsets of the kernel fields the datapath reads, from the running kernel's BTF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `offsetof(struct sk_buff, dev)`: the device a TC program's packet is on
    /// (inside anonymous unions in recent kernels).
    pub skb_dev: u32,
    /// `offsetof(struct net_device, state)` (`unsigned long`, the
    /// `__LINK_STATE_*` bits: START, PRESENT, NOCARRIER...).
    pub dev_state: u32,
    /// `offsetof(struct net_device, flags)` (`unsigned int`, `IFF_*`).
    pub dev_flags: u32,
    /// `offsetof(struct net_device, ifindex)` (`int`).
    pub dev_ifindex: u32,
    /// `offsetof(struct xdp_buff, rxq)`: an XDP context's receive queue.
    pub xdp_rxq: u32,
    /// `offsetof(struct xdp_rxq_info, dev)`: that queue's device.
    pub rxq_dev: u32,
}

/// What is wrong with a BTF blob or a lookup in it.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading BTF from {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad BTF magic {found:#06x}: expected 0xeb9f (only little-endian BTF is read)")]
    BadMagic { found: u16 },
    #[error("unsupported BTF version {found}: expected {VERSION}")]
    BadVersion { found: u8 },
    #[error("bad BTF header: {reason}")]
    BadHeader { reason: String },
    #[error("truncated BTF {section} section: {what} needs {need} bytes at offset {at}, the section has {len}")]
    Truncated { section: &'static str, what: String, at: usize, need: usize, len: usize },
    #[error("BTF type {id} has unknown kind {kind}")]
    UnknownKind { id: u32, kind: u32 },
    #[error("BTF type {id}: name offset {offset} is not a NUL-terminated string of the string section")]
    BadString { id: u32, offset: u32 },
    #[error("BTF type {id} refers to type {target}, which does not exist")]
    BadTypeId { id: u32, target: u32 },
    #[error("struct {strukt} not found in BTF")]
    StructNotFound { strukt: String },
    #[error("struct {strukt} has no member {member}")]
    MemberNotFound { strukt: String, member: String },
    #[error(
        "struct {strukt} member {member} is a bitfield or not byte-aligned (bit offset \
         {bit_offset}, {bits} bits): it has no byte offset"
    )]
    Bitfield { strukt: String, member: String, bit_offset: u64, bits: u32 },
    #[error("struct {strukt} member {member}: types nest deeper than {limit} levels")]
    TooDeep { strukt: String, member: String, limit: usize },
    #[error("struct {strukt} member {member}: bit offset {bit_offset} does not fit a u32 byte offset")]
    OffsetOverflow { strukt: String, member: String, bit_offset: u64 },
}

/// Reads [`VMLINUX`] and computes the datapath's offsets from it.
pub fn kernel_offsets() -> Result<KernelOffsets, BtfError> {
    let blob = std::fs::read(VMLINUX).map_err(|source| BtfError::Io { path: PathBuf::from(VMLINUX), source })?;
    offsets_from(&blob)
}

/// Computes the datapath's offsets from a raw BTF blob (the format of
/// [`VMLINUX`]), parsing it once.
pub fn offsets_from(blob: &[u8]) -> Result<KernelOffsets, BtfError> {
    let btf = Btf::parse(blob)?;
    Ok(KernelOffsets {
        skb_dev: btf.member_offset("sk_buff", "dev")?,
        dev_state: btf.member_offset("net_device", "state")?,
        dev_flags: btf.member_offset("net_device", "flags")?,
        dev_ifindex: btf.member_offset("net_device", "ifindex")?,
        xdp_rxq: btf.member_offset("xdp_buff", "rxq")?,
        rxq_dev: btf.member_offset("xdp_rxq_info", "dev")?,
    })
}

/// The byte offset of `member` in `struct strukt` (the tag, without the word
/// `struct`), searching anonymous struct/union members recursively and adding
/// their offsets. Bitfields and members not on a byte boundary are refused.
pub fn member_offset(blob: &[u8], strukt: &str, member: &str) -> Result<u32, BtfError> {
    Btf::parse(blob)?.member_offset(strukt, member)
}

/// Reads the little-endian `u32` at `at`, if the buffer has it.
fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    let end = at.checked_add(4)?;
    let bytes: [u8; 4] = buf.get(at..end)?.try_into().ok()?;
    Some(u32::from_le_bytes(bytes))
}

/// How many bytes follow a `struct btf_type` of this kind, or `None` for a
/// kind this reader does not know.
fn extra_len(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        kind::INT | kind::VAR | kind::DECL_TAG => 4,
        kind::PTR
        | kind::FWD
        | kind::TYPEDEF
        | kind::VOLATILE
        | kind::CONST
        | kind::RESTRICT
        | kind::FUNC
        | kind::FLOAT
        | kind::TYPE_TAG => 0,
        // struct btf_array: type, index_type, nelems.
        kind::ARRAY => 12,
        // struct btf_member / btf_var_secinfo / btf_enum64: three u32 each.
        kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => 12 * vlen,
        // struct btf_enum / btf_param: two u32 each.
        kind::ENUM | kind::FUNC_PROTO => 8 * vlen,
        _ => return None,
    })
}

/// One `struct btf_type`, with where it starts in the type section.
#[derive(Clone, Copy, Debug)]
struct TypeHeader {
    id: u32,
    at: usize,
    name_off: u32,
    info: u32,
    /// `size` for INT, STRUCT, UNION, ENUM..., `type` for PTR, TYPEDEF, CONST...
    size_or_type: u32,
}

impl TypeHeader {
    fn kind(&self) -> u32 {
        (self.info >> 24) & 0x1f
    }

    fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }

    fn kind_flag(&self) -> bool {
        self.info >> 31 == 1
    }
}

/// One `struct btf_member`.
#[derive(Clone, Copy, Debug)]
struct Member {
    name_off: u32,
    type_id: u32,
    offset: u32,
}

impl Member {
    fn at(types: &[u8], at: usize) -> Option<Self> {
        Some(Self { name_off: u32_at(types, at)?, type_id: u32_at(types, at + 4)?, offset: u32_at(types, at + 8)? })
    }
}

/// What a lookup is for, to name it in errors.
struct Query<'q> {
    strukt: &'q str,
    member: &'q str,
}

impl Query<'_> {
    fn too_deep(&self, limit: usize) -> BtfError {
        BtfError::TooDeep { strukt: self.strukt.to_owned(), member: self.member.to_owned(), limit }
    }
}

/// A parsed blob: its two sections and where each type starts.
struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// Start of type `id` in `types` at index `id - 1` (type 0 is `void`).
    starts: Vec<usize>,
}

impl<'a> Btf<'a> {
    /// Checks the header and walks the type section once, recording where
    /// each type starts.
    fn parse(blob: &'a [u8]) -> Result<Self, BtfError> {
        let truncated_header = |need: usize| BtfError::Truncated {
            section: "header",
            what: "the BTF header".to_owned(),
            at: 0,
            need,
            len: blob.len(),
        };
        let magic =
            blob.get(0..2).map(|b| u16::from_le_bytes([b[0], b[1]])).ok_or_else(|| truncated_header(HEADER_LEN))?;
        if magic != MAGIC {
            return Err(BtfError::BadMagic { found: magic });
        }
        let version = *blob.get(2).ok_or_else(|| truncated_header(HEADER_LEN))?;
        if version != VERSION {
            return Err(BtfError::BadVersion { found: version });
        }
        let field = |at: usize| u32_at(blob, at).ok_or_else(|| truncated_header(HEADER_LEN));
        let hdr_len = field(4)? as usize;
        let (type_off, type_len) = (field(8)? as usize, field(12)? as usize);
        let (str_off, str_len) = (field(16)? as usize, field(20)? as usize);
        if hdr_len < HEADER_LEN {
            return Err(BtfError::BadHeader {
                reason: format!("hdr_len {hdr_len} is shorter than the {HEADER_LEN}-byte header"),
            });
        }
        let data = blob.get(hdr_len..).ok_or_else(|| truncated_header(hdr_len))?;
        let section = |name: &'static str, off: usize, len: usize| {
            off.checked_add(len).and_then(|end| data.get(off..end)).ok_or_else(|| BtfError::Truncated {
                section: name,
                what: format!("the {name} section ({len} bytes at {off} after the header)"),
                at: off,
                need: len,
                len: data.len().saturating_sub(off),
            })
        };
        let types = section("type", type_off, type_len)?;
        let strings = section("string", str_off, str_len)?;

        let mut starts = Vec::new();
        let mut at = 0;
        while at < types.len() {
            let id = u32::try_from(starts.len() + 1)
                .map_err(|_| BtfError::BadHeader { reason: "more than 2^32 types".to_owned() })?;
            let truncated = |need: usize| BtfError::Truncated {
                section: "type",
                what: format!("type {id}"),
                at,
                need,
                len: types.len(),
            };
            let header = Self::header_at(types, id, at).ok_or_else(|| truncated(TYPE_LEN))?;
            let extra =
                extra_len(header.kind(), header.vlen()).ok_or(BtfError::UnknownKind { id, kind: header.kind() })?;
            let need = TYPE_LEN + extra;
            if at + need > types.len() {
                return Err(truncated(need));
            }
            starts.push(at);
            at += need;
        }
        Ok(Self { types, strings, starts })
    }

    fn header_at(types: &[u8], id: u32, at: usize) -> Option<TypeHeader> {
        Some(TypeHeader {
            id,
            at,
            name_off: u32_at(types, at)?,
            info: u32_at(types, at + 4)?,
            size_or_type: u32_at(types, at + 8)?,
        })
    }

    /// The header of type `target`, referred to by type `from`.
    fn header(&self, from: u32, target: u32) -> Result<TypeHeader, BtfError> {
        (target as usize)
            .checked_sub(1)
            .and_then(|index| self.starts.get(index))
            .and_then(|&at| Self::header_at(self.types, target, at))
            .ok_or(BtfError::BadTypeId { id: from, target })
    }

    /// The NUL-terminated name at `offset` of the string section.
    fn name(&self, id: u32, offset: u32) -> Result<&'a [u8], BtfError> {
        let bad = || BtfError::BadString { id, offset };
        let rest = self.strings.get(offset as usize..).ok_or_else(bad)?;
        let end = rest.iter().position(|&b| b == 0).ok_or_else(bad)?;
        Ok(&rest[..end])
    }

    /// The members of a struct or union type.
    fn members(&self, ty: TypeHeader) -> impl Iterator<Item = Result<Member, BtfError>> + '_ {
        (0..ty.vlen()).map(move |i| {
            let at = ty.at + TYPE_LEN + i * MEMBER_LEN;
            Member::at(self.types, at).ok_or_else(|| BtfError::Truncated {
                section: "type",
                what: format!("member {i} of type {}", ty.id),
                at,
                need: MEMBER_LEN,
                len: self.types.len(),
            })
        })
    }

    /// Follows typedef/const/volatile/restrict/type-tag links from `id`
    /// (referred to by type `from`) to the type they name.
    fn resolve(&self, from: u32, id: u32, query: &Query<'_>) -> Result<TypeHeader, BtfError> {
        let mut ty = self.header(from, id)?;
        for _ in 0..MAX_CHAIN {
            match ty.kind() {
                kind::TYPEDEF | kind::CONST | kind::VOLATILE | kind::RESTRICT | kind::TYPE_TAG => {
                    ty = self.header(ty.id, ty.size_or_type)?;
                }
                _ => return Ok(ty),
            }
        }
        Err(query.too_deep(MAX_CHAIN))
    }

    /// For a member without `kind_flag` encoding: its bitfield size, if its
    /// type is an INT whose encoding is narrower than the INT or shifted.
    fn int_bitfield(&self, from: u32, type_id: u32, query: &Query<'_>) -> Result<Option<u32>, BtfError> {
        let ty = self.resolve(from, type_id, query)?;
        if ty.kind() != kind::INT {
            return Ok(None);
        }
        let encoding = u32_at(self.types, ty.at + TYPE_LEN).ok_or_else(|| BtfError::Truncated {
            section: "type",
            what: format!("the encoding of type {}", ty.id),
            at: ty.at + TYPE_LEN,
            need: 4,
            len: self.types.len(),
        })?;
        let (bits, shift) = (encoding & 0xff, (encoding >> 16) & 0xff);
        let full = u64::from(bits) == u64::from(ty.size_or_type) * 8;
        Ok((shift != 0 || !full).then_some(bits))
    }

    /// The byte offset of `member` in the struct named `strukt`.
    fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let query = Query { strukt, member };
        let mut found_struct = false;
        for (index, &at) in self.starts.iter().enumerate() {
            let id = u32::try_from(index + 1).unwrap_or(u32::MAX);
            let Some(ty) = Self::header_at(self.types, id, at) else {
                continue;
            };
            if ty.kind() != kind::STRUCT || self.name(id, ty.name_off)? != strukt.as_bytes() {
                continue;
            }
            found_struct = true;
            let mut searched = HashSet::new();
            if let Some(bit_offset) = self.search(ty, 0, 0, &query, &mut searched)? {
                if bit_offset % 8 != 0 {
                    return Err(BtfError::Bitfield {
                        strukt: strukt.to_owned(),
                        member: member.to_owned(),
                        bit_offset,
                        bits: 0,
                    });
                }
                return u32::try_from(bit_offset / 8).map_err(|_| BtfError::OffsetOverflow {
                    strukt: strukt.to_owned(),
                    member: member.to_owned(),
                    bit_offset,
                });
            }
        }
        Err(if found_struct {
            BtfError::MemberNotFound { strukt: strukt.to_owned(), member: member.to_owned() }
        } else {
            BtfError::StructNotFound { strukt: strukt.to_owned() }
        })
    }

    /// Searches the members of struct/union `ty` (at bit `base` of the
    /// outer struct) for the queried member, descending into anonymous
    /// struct/union members; returns its bit offset in the outer struct.
    fn search(
        &self,
        ty: TypeHeader,
        base: u64,
        depth: usize,
        query: &Query<'_>,
        searched: &mut HashSet<u32>,
    ) -> Result<Option<u64>, BtfError> {
        if depth > MAX_NESTING {
            return Err(query.too_deep(MAX_NESTING));
        }
        for member in self.members(ty) {
            let member = member?;
            let (bit_offset, bitfield_bits) =
                if ty.kind_flag() { (member.offset & 0x00ff_ffff, member.offset >> 24) } else { (member.offset, 0) };
            let bit_offset = base + u64::from(bit_offset);
            let name = self.name(ty.id, member.name_off)?;
            if name == query.member.as_bytes() {
                let bits = if ty.kind_flag() {
                    (bitfield_bits != 0).then_some(bitfield_bits)
                } else {
                    self.int_bitfield(ty.id, member.type_id, query)?
                };
                if let Some(bits) = bits {
                    return Err(BtfError::Bitfield {
                        strukt: query.strukt.to_owned(),
                        member: query.member.to_owned(),
                        bit_offset,
                        bits,
                    });
                }
                return Ok(Some(bit_offset));
            }
            if name.is_empty() {
                let inner = self.resolve(ty.id, member.type_id, query)?;
                let aggregate = matches!(inner.kind(), kind::STRUCT | kind::UNION);
                // A type already searched without success cannot hold the
                // member at another offset either: searching it once keeps
                // cyclic or heavily shared input linear.
                if aggregate
                    && searched.insert(inner.id)
                    && let Some(found) = self.search(inner, bit_offset, depth + 1, query, searched)?
                {
                    return Ok(Some(found));
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- the running kernel's BTF ----

    /// The running kernel's BTF, or `None` (test skipped) where there is
    /// none; under `CI=true` a missing file fails the test.
    fn vmlinux(test: &str) -> Option<Vec<u8>> {
        match std::fs::read(VMLINUX) {
            Ok(blob) => Some(blob),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "{test}: CI=true but there is no {VMLINUX} (kernel without CONFIG_DEBUG_INFO_BTF?)"
                );
                eprintln!("SKIPPED {test}: no /sys/kernel/btf/vmlinux");
                None
            }
            Err(e) => panic!("{test}: reading {VMLINUX}: {e}"),
        }
    }

    /// The running kernel's release, e.g. "6.18.44-...".
    fn kernel_release() -> String {
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned()
    }

    #[test]
    fn vmlinux_offsets_of_the_running_kernel() {
        let Some(blob) = vmlinux("vmlinux_offsets_of_the_running_kernel") else {
            return;
        };
        let offsets = offsets_from(&blob).unwrap();
        eprintln!("kernel {}: {offsets:?}", kernel_release());
        assert_eq!(kernel_offsets().unwrap(), offsets);
        // Plausible on any kernel: naturally aligned, xdp_rxq_info.dev near the start.
        assert_eq!(offsets.skb_dev % 8, 0, "{offsets:?}");
        assert_eq!(offsets.dev_state % 8, 0, "{offsets:?}");
        assert_eq!(offsets.dev_flags % 4, 0, "{offsets:?}");
        assert_eq!(offsets.dev_ifindex % 4, 0, "{offsets:?}");
        assert_eq!(offsets.xdp_rxq % 8, 0, "{offsets:?}");
        assert!(offsets.rxq_dev < 64 && offsets.rxq_dev.is_multiple_of(8), "{offsets:?}");
        let release = kernel_release();
        if release.starts_with("6.18.") {
            // Measured on this machine's kernel (docs/kernel-facts.md).
            assert_eq!(
                offsets,
                KernelOffsets {
                    skb_dev: 16,
                    dev_state: 168,
                    dev_flags: 176,
                    dev_ifindex: 224,
                    xdp_rxq: 32,
                    rxq_dev: 0,
                }
            );
            assert_eq!(member_offset(&blob, "net_device", "operstate").unwrap(), 768);
        } else {
            eprintln!("kernel {release} is not 6.18: exact offsets not checked");
        }
    }

    #[test]
    fn vmlinux_bitfields_and_missing_names_are_refused() {
        let Some(blob) = vmlinux("vmlinux_bitfields_and_missing_names_are_refused") else {
            return;
        };
        // `__u8 cloned:1` has been a bitfield of sk_buff for ever.
        let err = member_offset(&blob, "sk_buff", "cloned").unwrap_err();
        assert!(matches!(err, BtfError::Bitfield { bits: 1, .. }), "{err:?}");
        let err = member_offset(&blob, "net_device", "no_such_member").unwrap_err();
        assert!(matches!(err, BtfError::MemberNotFound { .. }), "{err:?}");
        let err = member_offset(&blob, "no_such_struct_here", "dev").unwrap_err();
        assert!(matches!(err, BtfError::StructNotFound { .. }), "{err:?}");
    }

    // ---- synthetic blobs ----

    /// Builds a little-endian BTF blob type by type.
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        fn new() -> Self {
            Self { types: Vec::new(), strings: vec![0], next_id: 1 }
        }

        fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = u32::try_from(self.strings.len()).unwrap();
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        /// Appends a raw type: header then `extra` words; returns its id.
        fn raw(
            &mut self,
            name: &str,
            kind: u32,
            vlen: usize,
            kind_flag: bool,
            size_or_type: u32,
            extra: &[u32],
        ) -> u32 {
            let name_off = self.string(name);
            let info = (u32::from(kind_flag) << 31) | (kind << 24) | u32::try_from(vlen).unwrap();
            for word in [name_off, info, size_or_type].iter().chain(extra) {
                self.types.extend_from_slice(&word.to_le_bytes());
            }
            self.next_id += 1;
            self.next_id - 1
        }

        fn int(&mut self, name: &str, size: u32, bits: u32) -> u32 {
            self.raw(name, kind::INT, 0, false, size, &[bits])
        }

        fn reference(&mut self, kind: u32, name: &str, target: u32) -> u32 {
            self.raw(name, kind, 0, false, target, &[])
        }

        /// A struct or union; members are (name, type, offset word).
        fn aggregate(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            kind_flag: bool,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let mut extra = Vec::new();
            for &(member, type_id, offset) in members {
                extra.extend([self.string(member), type_id, offset]);
            }
            self.raw(name, kind, members.len(), kind_flag, size, &extra)
        }

        fn finish(&self) -> Vec<u8> {
            let type_len = u32::try_from(self.types.len()).unwrap();
            let str_len = u32::try_from(self.strings.len()).unwrap();
            let mut blob = Vec::new();
            blob.extend_from_slice(&MAGIC.to_le_bytes());
            blob.extend([VERSION, 0]);
            for word in [24, 0, type_len, type_len, str_len] {
                blob.extend_from_slice(&u32::to_le_bytes(word));
            }
            blob.extend_from_slice(&self.types);
            blob.extend_from_slice(&self.strings);
            blob
        }
    }

    /// `BTF_INT_SIGNED` in an INT's encoding word.
    const INT_SIGNED: u32 = 1 << 24;

    /// A member offset word with `kind_flag` encoding.
    fn bitfield(bits: u32, bit_offset: u32) -> u32 {
        (bits << 24) | bit_offset
    }

    /// Offsets of the header fields, for corrupting them.
    const HDR_LEN_AT: usize = 4;
    const TYPE_LEN_AT: usize = 12;

    /// A blob modelled on the kernel's: one type of every kind ahead of the
    /// structs (so a wrong size for any kind throws the walk off), `sk_buff`'s
    /// `dev` two anonymous levels down, bitfields of both encodings.
    fn kernel_like() -> Builder {
        let mut b = Builder::new();
        let int = b.int("int", 4, INT_SIGNED | 32);
        let uint = b.int("unsigned int", 4, 32);
        let ulong = b.int("long unsigned int", 8, 64);
        let u8_ty = b.int("unsigned char", 1, 8);
        let int3 = b.int("int", 4, 3); // a bitfield without kind_flag
        let fwd_dev = b.reference(kind::FWD, "net_device", 0);
        let dev_ptr = b.reference(kind::PTR, "", fwd_dev);
        b.reference(kind::FWD, "page", 0); // declared, never defined
        // One of each remaining kind.
        b.raw("", kind::ARRAY, 0, false, 0, &[u8_ty, int, 16]);
        let name = b.string("ONE");
        b.raw("e", kind::ENUM, 2, false, 4, &[name, 1, name, 2]);
        b.raw("e64", kind::ENUM64, 1, true, 8, &[name, 1, 1]);
        let proto = b.raw("", kind::FUNC_PROTO, 2, false, int, &[name, int, 0, ulong]);
        b.reference(kind::FUNC, "f", proto);
        let var = b.raw("v", kind::VAR, 0, false, int, &[1]);
        b.raw(".data", kind::DATASEC, 1, false, 4, &[var, 0, 4]);
        b.raw("double", kind::FLOAT, 0, false, 8, &[]);
        b.raw("tag", kind::DECL_TAG, 0, false, var, &[u32::MAX]);
        let user_ptr = b.reference(kind::TYPE_TAG, "user", dev_ptr);
        let volatile = b.reference(kind::VOLATILE, "", ulong);
        let cons = b.reference(kind::CONST, "", volatile);
        b.reference(kind::RESTRICT, "", dev_ptr);
        let u32_ty = b.reference(kind::TYPEDEF, "u32", uint);
        // A struct and a typedef sharing the name of a wanted struct do not
        // confuse the lookup.
        b.reference(kind::TYPEDEF, "sk_buff", int);

        // struct sk_buff { union { struct { next, prev; union { dev; dev_scratch; }; }; rbnode; }; len; cloned:1; }
        let dev_union = b.aggregate(kind::UNION, "", 8, false, &[("dev", user_ptr, 0), ("dev_scratch", ulong, 0)]);
        let list = b.aggregate(
            kind::STRUCT,
            "",
            24,
            false,
            &[("next", dev_ptr, 0), ("prev", dev_ptr, 64), ("", dev_union, 128)],
        );
        let const_list = b.reference(kind::CONST, "", list);
        let outer = b.aggregate(kind::UNION, "", 24, false, &[("", const_list, 0), ("rbnode", ulong, 0)]);
        b.aggregate(
            kind::STRUCT,
            "sk_buff",
            40,
            true,
            &[("", outer, 0), ("len", u32_ty, 192), ("cloned", u8_ty, bitfield(1, 224))],
        );
        b.aggregate(
            kind::STRUCT,
            "net_device",
            256,
            false,
            &[
                ("state", cons, 168 * 8),
                ("flags", uint, 176 * 8),
                ("ifindex", int, 224 * 8),
                ("narrow", int3, 228 * 8),
                ("unaligned", u8_ty, 232 * 8 + 3),
            ],
        );
        let rxq =
            b.aggregate(kind::STRUCT, "xdp_rxq_info", 64, false, &[("dev", dev_ptr, 0), ("queue_index", uint, 64)]);
        let rxq_ptr = b.reference(kind::PTR, "", rxq);
        b.aggregate(
            kind::STRUCT,
            "xdp_buff",
            56,
            false,
            &[
                ("data", dev_ptr, 0),
                ("data_end", dev_ptr, 64),
                ("data_meta", dev_ptr, 128),
                ("data_hard_start", dev_ptr, 192),
                ("rxq", rxq_ptr, 256),
            ],
        );
        b
    }

    #[test]
    fn synthetic_offsets_of_all_six_fields() {
        let offsets = offsets_from(&kernel_like().finish()).unwrap();
        assert_eq!(
            offsets,
            KernelOffsets { skb_dev: 16, dev_state: 168, dev_flags: 176, dev_ifindex: 224, xdp_rxq: 32, rxq_dev: 0 }
        );
    }

    #[test]
    fn synthetic_member_inside_anonymous_union_adds_offsets() {
        let blob = kernel_like().finish();
        assert_eq!(member_offset(&blob, "sk_buff", "dev").unwrap(), 16);
        assert_eq!(member_offset(&blob, "sk_buff", "dev_scratch").unwrap(), 16);
        assert_eq!(member_offset(&blob, "sk_buff", "prev").unwrap(), 8);
        assert_eq!(member_offset(&blob, "sk_buff", "rbnode").unwrap(), 0);
        // kind_flag set, bitfield size 0: a plain member at bit 192.
        assert_eq!(member_offset(&blob, "sk_buff", "len").unwrap(), 24);
        assert_eq!(member_offset(&blob, "xdp_rxq_info", "queue_index").unwrap(), 8);
    }

    #[test]
    fn synthetic_bitfield_members_are_refused_and_named() {
        let blob = kernel_like().finish();
        // kind_flag encoding: 1 bit at bit 224.
        let err = member_offset(&blob, "sk_buff", "cloned").unwrap_err();
        assert!(matches!(err, BtfError::Bitfield { bit_offset: 224, bits: 1, .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("sk_buff") && msg.contains("cloned"), "{msg}");
        // INT encoding (no kind_flag): a 3-bit int.
        let err = member_offset(&blob, "net_device", "narrow").unwrap_err();
        assert!(matches!(err, BtfError::Bitfield { bits: 3, .. }), "{err:?}");
        assert!(err.to_string().contains("net_device") && err.to_string().contains("narrow"));
        // Not on a byte boundary.
        let err = member_offset(&blob, "net_device", "unaligned").unwrap_err();
        assert!(matches!(err, BtfError::Bitfield { bit_offset: 1859, .. }), "{err:?}");
    }

    #[test]
    fn synthetic_missing_struct_and_member_are_named() {
        let blob = kernel_like().finish();
        let err = member_offset(&blob, "sk_buf", "dev").unwrap_err();
        assert!(matches!(&err, BtfError::StructNotFound { strukt } if strukt == "sk_buf"), "{err:?}");
        assert!(err.to_string().contains("sk_buf"), "{err}");
        // Only forward-declared: not a struct with members.
        let err = member_offset(&blob, "page", "flags").unwrap_err();
        assert!(matches!(err, BtfError::StructNotFound { .. }), "{err:?}");
        let err = member_offset(&blob, "net_device", "operstate").unwrap_err();
        assert!(
            matches!(&err, BtfError::MemberNotFound { strukt, member } if strukt == "net_device" && member == "operstate"),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("net_device") && msg.contains("operstate"), "{msg}");
        // A member of a named (not anonymous) nested type is not a member.
        let err = member_offset(&blob, "xdp_buff", "queue_index").unwrap_err();
        assert!(matches!(err, BtfError::MemberNotFound { .. }), "{err:?}");
    }

    #[test]
    fn truncated_blobs_are_errors_not_panics() {
        let blob = kernel_like().finish();
        for len in 0..blob.len() {
            let err = offsets_from(&blob[..len]).unwrap_err();
            assert!(matches!(err, BtfError::Truncated { .. }), "length {len}: {err:?}");
        }
        // The header claims more types than there are bytes left.
        let err = offsets_from(&blob[..HEADER_LEN + 30]).unwrap_err();
        assert!(matches!(err, BtfError::Truncated { section: "type", .. }), "{err:?}");
        // A type cut in the middle, the section length agreeing with the cut.
        let mut cut = blob.clone();
        cut[TYPE_LEN_AT..TYPE_LEN_AT + 4].copy_from_slice(&30u32.to_le_bytes());
        let err = offsets_from(&cut).unwrap_err();
        assert!(matches!(&err, BtfError::Truncated { section: "type", what, .. } if what == "type 2"), "{err:?}");
        assert!(err.to_string().contains("type 2"), "{err}");
    }

    #[test]
    fn bad_magic_version_and_header_are_refused() {
        let blob = kernel_like().finish();
        let mut big_endian = blob.clone();
        big_endian[..2].copy_from_slice(&[0xeb, 0x9f]);
        let err = offsets_from(&big_endian).unwrap_err();
        assert!(matches!(err, BtfError::BadMagic { found: 0x9feb }), "{err:?}");
        assert!(err.to_string().contains("little-endian"), "{err}");
        let err = offsets_from(b"\x7fELF\x02\x01\x01\x00 and more bytes of an ELF file").unwrap_err();
        assert!(matches!(err, BtfError::BadMagic { found: 0x457f }), "{err:?}");

        let mut version = blob.clone();
        version[2] = 2;
        let err = offsets_from(&version).unwrap_err();
        assert!(matches!(err, BtfError::BadVersion { found: 2 }), "{err:?}");

        let mut short_header = blob.clone();
        short_header[HDR_LEN_AT..HDR_LEN_AT + 4].copy_from_slice(&8u32.to_le_bytes());
        let err = offsets_from(&short_header).unwrap_err();
        assert!(matches!(err, BtfError::BadHeader { .. }), "{err:?}");

        let mut huge_header = blob;
        huge_header[HDR_LEN_AT..HDR_LEN_AT + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = offsets_from(&huge_header).unwrap_err();
        assert!(matches!(err, BtfError::Truncated { section: "header", .. }), "{err:?}");
    }

    #[test]
    fn unknown_kind_is_named() {
        let mut b = kernel_like();
        let id = b.raw("future", 25, 0, false, 0, &[]);
        let err = offsets_from(&b.finish()).unwrap_err();
        assert!(matches!(err, BtfError::UnknownKind { id: i, kind: 25 } if i == id), "{err:?}");
        let mut b = Builder::new();
        b.raw("", 0, 0, false, 0, &[]);
        let err = offsets_from(&b.finish()).unwrap_err();
        assert!(matches!(err, BtfError::UnknownKind { id: 1, kind: 0 }), "{err:?}");
    }

    #[test]
    fn bad_references_are_errors() {
        let mut b = Builder::new();
        let int = b.int("int", 4, 32);
        b.aggregate(kind::STRUCT, "dangling", 8, false, &[("", 99, 0), ("x", int, 32)]);
        b.raw("bad_name", kind::STRUCT, 1, false, 4, &[10_000, int, 0]);
        let blob = b.finish();
        let err = member_offset(&blob, "dangling", "x").unwrap_err();
        assert!(matches!(err, BtfError::BadTypeId { id: 2, target: 99 }), "{err:?}");
        let err = member_offset(&blob, "bad_name", "x").unwrap_err();
        assert!(matches!(err, BtfError::BadString { id: 3, offset: 10_000 }), "{err:?}");
    }

    #[test]
    fn cyclic_and_deep_nesting_end() {
        let mut b = Builder::new();
        let int = b.int("int", 4, 32);
        // Type 2 is an anonymous struct that contains itself (and a typedef
        // chain that loops), type 4 the named struct around it.
        let own_id = b.next_id;
        b.aggregate(kind::STRUCT, "", 8, false, &[("", own_id, 0), ("", own_id + 1, 0)]);
        let looping = b.next_id;
        b.reference(kind::TYPEDEF, "loop", looping);
        b.aggregate(kind::STRUCT, "cyclic", 8, false, &[("", own_id, 0), ("", looping, 0)]);
        // A chain of anonymous structs deeper than MAX_NESTING, ending in `x`.
        let mut inner = b.aggregate(kind::STRUCT, "", 4, false, &[("x", int, 0)]);
        for _ in 0..=MAX_NESTING {
            inner = b.aggregate(kind::STRUCT, "", 4, false, &[("", inner, 0)]);
        }
        b.aggregate(kind::STRUCT, "deep", 4, false, &[("", inner, 0)]);
        let blob = b.finish();
        let err = member_offset(&blob, "cyclic", "x").unwrap_err();
        assert!(matches!(err, BtfError::TooDeep { limit: MAX_CHAIN, .. }), "{err:?}");
        let err = member_offset(&blob, "deep", "x").unwrap_err();
        assert!(
            matches!(&err, BtfError::TooDeep { strukt, member, limit: MAX_NESTING } if strukt == "deep" && member == "x"),
            "{err:?}"
        );
    }

    #[test]
    fn corrupted_bytes_never_panic_or_hang() {
        let blob = kernel_like().finish();
        for at in 0..blob.len() {
            for value in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut bad = blob.clone();
                bad[at] = value;
                // Any answer is fine; a panic or a hang is not.
                let _ = offsets_from(&bad);
            }
        }
    }
}
