//! A small reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): just enough to find the
//! byte offset of a struct field (through anonymous unions and structs), the values of an
//! enum, and the number of parameters of a function prototype behind a typedef. Pure: it
//! takes bytes, and it checks every length, so corrupt input is an error, never a panic.
//!
//! aya parses the same file for its own relocations, but keeps the type accessors private to
//! its crate; the format is simple and stable (include/uapi/linux/btf.h), so this reads it.

use std::collections::HashMap;

/// Kinds of BTF type used here (`BTF_KIND_*`).
const KIND_INT: u8 = 1;
const KIND_PTR: u8 = 2;
const KIND_ARRAY: u8 = 3;
const KIND_STRUCT: u8 = 4;
const KIND_UNION: u8 = 5;
const KIND_ENUM: u8 = 6;
const KIND_TYPEDEF: u8 = 8;
const KIND_VOLATILE: u8 = 9;
const KIND_CONST: u8 = 10;
const KIND_RESTRICT: u8 = 11;
const KIND_FUNC_PROTO: u8 = 13;
const KIND_VAR: u8 = 14;
const KIND_DATASEC: u8 = 15;
const KIND_DECL_TAG: u8 = 17;
const KIND_TYPE_TAG: u8 = 18;
const KIND_ENUM64: u8 = 19;

const MAGIC: u16 = 0xeb9f;

/// One type record: its header and where its trailing data starts in [`Btf::types`].
#[derive(Clone, Copy, Debug)]
struct Type {
    name: u32,
    kind: u8,
    vlen: u16,
    kind_flag: bool,
    /// Size, or the referenced type id, depending on the kind.
    size_or_type: u32,
    data: usize,
}

/// Parsed BTF: the type section, the string section and the type records (type id `i` is
/// `records[i - 1]`; id 0 is `void`).
#[derive(Debug)]
pub(crate) struct Btf {
    types: Vec<u8>,
    strings: Vec<u8>,
    records: Vec<Type>,
    /// Named structs, by name (the first of a name wins).
    structs: HashMap<String, u32>,
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32, String> {
    bytes
        .get(at..at.checked_add(4).ok_or("offset overflow")?)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| format!("truncated BTF at byte {at}"))
}

impl Btf {
    /// Parses BTF in the host's byte order.
    pub(crate) fn parse(data: &[u8]) -> Result<Btf, String> {
        let magic = data
            .get(0..2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .ok_or("no BTF header")?;
        if magic != MAGIC {
            return Err(format!("not BTF of this byte order (magic {magic:#06x})"));
        }
        let header_len = u32_at(data, 4)? as usize;
        let section = |offset_at: usize, len_at: usize| -> Result<Vec<u8>, String> {
            let start = header_len
                .checked_add(u32_at(data, offset_at)? as usize)
                .ok_or("section offset overflow")?;
            let end = start
                .checked_add(u32_at(data, len_at)? as usize)
                .ok_or("section length overflow")?;
            data.get(start..end)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| "BTF section past the end of the data".to_string())
        };
        let types = section(8, 12)?;
        let strings = section(16, 20)?;
        let mut records = Vec::new();
        let mut at = 0;
        while at < types.len() {
            let info = u32_at(&types, at + 4)?;
            let record = Type {
                name: u32_at(&types, at)?,
                kind: ((info >> 24) & 0x1f) as u8,
                vlen: (info & 0xffff) as u16,
                kind_flag: info >> 31 == 1,
                size_or_type: u32_at(&types, at + 8)?,
                data: at + 12,
            };
            let vlen = usize::from(record.vlen);
            let trailing = match record.kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                0..=19 => 0,
                kind => return Err(format!("unknown BTF kind {kind}")),
            };
            at = record.data + trailing;
            if at > types.len() {
                return Err("truncated BTF type section".into());
            }
            records.push(record);
        }
        let mut btf = Btf {
            types,
            strings,
            records,
            structs: HashMap::new(),
        };
        let mut structs = HashMap::new();
        for (index, record) in btf.records.iter().enumerate() {
            if record.kind == KIND_STRUCT && record.name != 0 {
                structs
                    .entry(btf.string(record.name).to_string())
                    .or_insert(index as u32 + 1);
            }
        }
        btf.structs = structs;
        Ok(btf)
    }

    /// The string at `offset` of the string section ("" when out of range).
    fn string(&self, offset: u32) -> &str {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or_default()
    }

    fn record(&self, id: u32) -> Option<&Type> {
        self.records.get((id as usize).checked_sub(1)?)
    }

    /// The `index`-th `width`-byte entry after a record, as u32 words.
    fn entry(&self, record: &Type, index: usize, width: usize) -> Option<[u32; 3]> {
        let at = record.data + index * width;
        let word = |n: usize| u32_at(&self.types, at + 4 * n).ok();
        Some([word(0)?, word(1)?, if width >= 12 { word(2)? } else { 0 }])
    }

    /// `id` with typedefs and qualifiers peeled off.
    fn resolve(&self, mut id: u32) -> Option<u32> {
        // Bounded: a corrupt file may loop.
        for _ in 0..64 {
            let record = self.record(id)?;
            match record.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = record.size_or_type;
                }
                _ => return Some(id),
            }
        }
        None
    }

    /// Byte offset and type of member `name` of the struct or union `id`, looking into
    /// anonymous members too. Bitfields have no byte offset: `None`.
    fn member(&self, id: u32, name: &str, depth: u32) -> Option<(u32, u32)> {
        let record = self.record(self.resolve(id)?)?;
        if !matches!(record.kind, KIND_STRUCT | KIND_UNION) || depth > 8 {
            return None;
        }
        for index in 0..usize::from(record.vlen) {
            let [member_name, member_type, offset] = self.entry(record, index, 12)?;
            let (bit_offset, bitfield) = if record.kind_flag {
                (offset & 0x00ff_ffff, offset >> 24 != 0)
            } else {
                (offset, false)
            };
            if member_name == 0 {
                if let Some((inner, ty)) = self.member(member_type, name, depth + 1) {
                    return Some((bit_offset / 8 + inner, ty));
                }
            } else if self.string(member_name) == name {
                return (!bitfield && bit_offset % 8 == 0).then_some((bit_offset / 8, member_type));
            }
        }
        None
    }

    /// Byte offset of `path` (a member, then members of its type...) in struct `name`.
    pub(crate) fn offset(&self, name: &str, path: &[&str]) -> Option<u32> {
        let mut id = *self.structs.get(name)?;
        let mut total = 0u32;
        for field in path {
            let (offset, ty) = self.member(id, field, 0)?;
            total = total.checked_add(offset)?;
            id = ty;
        }
        Some(total)
    }

    /// The (name, value) pairs of the enum `name` (32 or 64-bit), in declaration order.
    pub(crate) fn enum_values(&self, name: &str) -> Option<Vec<(String, u64)>> {
        let record = self.records.iter().find(|record| {
            matches!(record.kind, KIND_ENUM | KIND_ENUM64)
                && record.vlen > 0
                && self.string(record.name) == name
        })?;
        (0..usize::from(record.vlen))
            .map(|index| {
                let (value_name, value) = if record.kind == KIND_ENUM {
                    let [value_name, value, _] = self.entry(record, index, 8)?;
                    // Signed when the kind flag says so; drop reasons are small and positive.
                    (value_name, u64::from(value))
                } else {
                    let [value_name, low, high] = self.entry(record, index, 12)?;
                    (value_name, u64::from(high) << 32 | u64::from(low))
                };
                Some((self.string(value_name).to_string(), value))
            })
            .collect()
    }

    /// Parameters of the function prototype the typedef `name` points to (a pointer to it).
    pub(crate) fn typedef_proto_params(&self, name: &str) -> Option<usize> {
        let typedef = self
            .records
            .iter()
            .find(|record| record.kind == KIND_TYPEDEF && self.string(record.name) == name)?;
        let mut id = self.resolve(typedef.size_or_type)?;
        if self.record(id)?.kind == KIND_PTR {
            id = self.resolve(self.record(id)?.size_or_type)?;
        }
        let proto = self.record(id)?;
        (proto.kind == KIND_FUNC_PROTO).then_some(usize::from(proto.vlen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF bytes from type records (header words, then trailing words) and strings.
    fn build(types: &[Vec<u32>], strings: &[u8]) -> Vec<u8> {
        let type_bytes: Vec<u8> = types
            .iter()
            .flatten()
            .flat_map(|word| word.to_ne_bytes())
            .collect();
        let mut out = Vec::new();
        out.extend(MAGIC.to_ne_bytes());
        out.extend([1u8, 0]);
        for word in [24, 0, type_bytes.len() as u32, type_bytes.len() as u32] {
            out.extend(word.to_ne_bytes());
        }
        out.extend((strings.len() as u32).to_ne_bytes());
        out.extend(type_bytes);
        out.extend(strings);
        out
    }

    fn info(kind: u8, vlen: u32, kind_flag: bool) -> u32 {
        (u32::from(kind_flag) << 31) | (u32::from(kind) << 24) | vlen
    }

    // Strings: 0 "", 1 "int", 5 "outer", 11 "a", 13 "b", 15 "e", 17 "X", 19 "Y", 21 "f", 23 "p".
    const STRINGS: &[u8] = b"\0int\0outer\0a\0b\0e\0X\0Y\0f\0p\0";

    fn sample() -> Vec<u8> {
        build(
            &[
                // 1: int, 4 bytes.
                vec![1, info(KIND_INT, 0, false), 4, 32],
                // 2: anonymous union { int b; } at the struct's byte 8.
                vec![0, info(KIND_UNION, 1, false), 4, 13, 1, 0],
                // 3: struct outer { int a @ 4; union { b } @ 8; int p:3 @ bit 96 }.
                vec![
                    5,
                    info(KIND_STRUCT, 3, true),
                    16,
                    11,
                    1,
                    32,
                    0,
                    2,
                    64,
                    23,
                    1,
                    (3 << 24) | 96,
                ],
                // 4: enum e { X = 2, Y = 12 }.
                vec![15, info(KIND_ENUM, 2, false), 4, 17, 2, 19, 12],
                // 5: func_proto (int, int) -> int; 6: pointer to it; 7: typedef f.
                vec![0, info(KIND_FUNC_PROTO, 2, false), 1, 0, 1, 0, 1],
                vec![0, info(KIND_PTR, 0, false), 5],
                vec![21, info(KIND_TYPEDEF, 0, false), 6],
            ],
            STRINGS,
        )
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.offset("outer", &["a"]), Some(4));
        assert_eq!(btf.offset("outer", &["b"]), Some(8));
        // A bitfield has no byte offset.
        assert_eq!(btf.offset("outer", &["p"]), None);
        assert_eq!(btf.offset("outer", &["missing"]), None);
        assert_eq!(btf.offset("inner", &["a"]), None);
    }

    #[test]
    fn reads_enums_and_prototypes() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(
            btf.enum_values("e"),
            Some(vec![("X".to_string(), 2), ("Y".to_string(), 12)])
        );
        assert_eq!(btf.typedef_proto_params("f"), Some(2));
        assert_eq!(btf.typedef_proto_params("a"), None);
    }

    #[test]
    fn corrupt_input_is_an_error() {
        let bytes = sample();
        for len in 0..bytes.len() {
            assert!(Btf::parse(&bytes[..len]).is_err(), "{len} bytes");
        }
        let mut wrong_magic = bytes.clone();
        wrong_magic[0] ^= 0xff;
        assert!(Btf::parse(&wrong_magic).is_err());
    }

    #[test]
    fn reads_this_kernels_sk_buff() {
        let Ok(data) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            panic!("this test needs /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF)");
        };
        let btf = Btf::parse(&data).unwrap();
        for (name, path) in [
            ("sk_buff", &["dev"][..]),
            ("sk_buff", &["protocol"]),
            ("sk_buff", &["network_header"]),
            ("net_device", &["ifindex"]),
        ] {
            assert!(btf.offset(name, path).is_some(), "{name}.{path:?}");
        }
        assert!(btf.enum_values("skb_drop_reason").unwrap().len() > 10);
    }
}
