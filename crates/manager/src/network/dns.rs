//! The little of the DNS wire format (RFC 1035) the resolver needs: read
//! a query's question, build a refusal, and read the IPv4 addresses and
//! TTLs of an answer. Queries are passed upstream as they came.

use std::net::Ipv4Addr;

const HEADER: usize = 12;
/// Record type A.
pub const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
/// Response code: server failure.
pub const RCODE_SERVFAIL: u8 = 2;
/// Response code: refused.
pub const RCODE_REFUSED: u8 = 5;

/// A malformed message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed DNS message: {0}")]
pub struct DnsError(&'static str);

/// The question of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// Message id.
    pub id: u16,
    /// Name asked for, lower case, no trailing dot.
    pub name: String,
    /// Record type asked for.
    pub qtype: u16,
    /// The question section's bytes (name, type, class), as sent.
    raw: Vec<u8>,
    /// Flags of the query (RD is copied into replies).
    flags: u16,
}

fn u16_at(msg: &[u8], at: usize) -> Result<u16, DnsError> {
    msg.get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or(DnsError("truncated"))
}

fn u32_at(msg: &[u8], at: usize) -> Result<u32, DnsError> {
    msg.get(at..at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(DnsError("truncated"))
}

/// Reads the (possibly compressed) name at `at`; answers it (lower case,
/// dotted) and the offset just after it in the message.
fn read_name(msg: &[u8], mut at: usize) -> Result<(String, usize), DnsError> {
    let mut name = String::new();
    let mut end = None;
    for _ in 0..128 {
        let len = *msg.get(at).ok_or(DnsError("truncated name"))?;
        match len {
            0 => {
                return Ok((name, end.unwrap_or(at + 1)));
            }
            l if l & 0xC0 == 0xC0 => {
                let ptr = usize::from(u16_at(msg, at)? & 0x3FFF);
                end.get_or_insert(at + 2);
                if ptr >= at {
                    return Err(DnsError("forward compression pointer"));
                }
                at = ptr;
            }
            l if l & 0xC0 == 0 => {
                let label = msg
                    .get(at + 1..at + 1 + usize::from(l))
                    .ok_or(DnsError("truncated label"))?;
                if !name.is_empty() {
                    name.push('.');
                }
                name.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
                if name.len() > 255 {
                    return Err(DnsError("name too long"));
                }
                at += 1 + usize::from(l);
            }
            _ => return Err(DnsError("unknown label type")),
        }
    }
    Err(DnsError("compression loop"))
}

/// Reads the question of a standard query with exactly one question.
///
/// # Errors
/// [`DnsError`] for anything else.
pub fn parse_query(msg: &[u8]) -> Result<Question, DnsError> {
    if msg.len() < HEADER {
        return Err(DnsError("shorter than a header"));
    }
    let flags = u16_at(msg, 2)?;
    if flags & 0x8000 != 0 {
        return Err(DnsError("a response, not a query"));
    }
    if (flags >> 11) & 0xF != 0 {
        return Err(DnsError("not a standard query"));
    }
    if u16_at(msg, 4)? != 1 {
        return Err(DnsError("not exactly one question"));
    }
    let (name, after) = read_name(msg, HEADER)?;
    let qtype = u16_at(msg, after)?;
    u16_at(msg, after + 2)?;
    Ok(Question {
        id: u16_at(msg, 0)?,
        name,
        qtype,
        raw: msg[HEADER..after + 4].to_vec(),
        flags,
    })
}

/// A reply to `q` with no records and response code `rcode`.
pub fn reply(q: &Question, rcode: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + q.raw.len());
    out.extend_from_slice(&q.id.to_be_bytes());
    // QR, RD copied, RA, rcode.
    let flags: u16 = 0x8000 | (q.flags & 0x0100) | 0x0080 | u16::from(rcode & 0xF);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&q.raw);
    out
}

/// Whether `msg` is the answer to `q` (same id, a response, same question).
pub fn answers(msg: &[u8], q: &Question) -> bool {
    msg.len() >= HEADER + q.raw.len()
        && u16_at(msg, 0).ok() == Some(q.id)
        && u16_at(msg, 2).is_ok_and(|f| f & 0x8000 != 0)
        && u16_at(msg, 4).ok() == Some(1)
        && read_name(msg, HEADER)
            .is_ok_and(|(n, after)| n == q.name && u16_at(msg, after).ok() == Some(q.qtype))
}

/// The IPv4 addresses (A records of class IN) in the answer section, with
/// their TTLs, seconds. CNAME records are skipped: the addresses that
/// follow them are the name's.
///
/// # Errors
/// [`DnsError`] when the message does not parse.
pub fn answer_ipv4(msg: &[u8]) -> Result<Vec<(Ipv4Addr, u32)>, DnsError> {
    let qd = u16_at(msg, 4)?;
    let an = u16_at(msg, 6)?;
    let mut at = HEADER;
    for _ in 0..qd {
        at = read_name(msg, at)?.1 + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        let (_, after) = read_name(msg, at)?;
        let rtype = u16_at(msg, after)?;
        let class = u16_at(msg, after + 2)?;
        let ttl = u32_at(msg, after + 4)?;
        let len = usize::from(u16_at(msg, after + 8)?);
        let data = msg
            .get(after + 10..after + 10 + len)
            .ok_or(DnsError("truncated record"))?;
        if rtype == TYPE_A && class == CLASS_IN && len == 4 {
            out.push((Ipv4Addr::new(data[0], data[1], data[2], data[3]), ttl));
        }
        at = after + 10 + len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `name` of type `qtype` (RD set), with an EDNS0 OPT
    /// record when `edns`.
    fn query(id: u16, name: &str, qtype: u16, edns: bool) -> Vec<u8> {
        let mut m = id.to_be_bytes().to_vec();
        m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)]);
        for l in name.split('.') {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.extend_from_slice(&[0, 0, qtype as u8, 0, 1]);
        if edns {
            m.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
        }
        m
    }

    /// An answer to `q` with a CNAME to `x.cdn.test` (compressed) and two
    /// A records of it.
    fn answer(q: &[u8]) -> Vec<u8> {
        let mut m = q.to_vec();
        m[2] = 0x81;
        m[3] = 0x80;
        m[7] = 3;
        m[11] = 0;
        let qlen = m.len() - HEADER;
        m.truncate(HEADER + qlen);
        // CNAME: name = pointer to the question's name (offset 12).
        m.extend_from_slice(&[0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 60]);
        let target = [1, b'x', 3, b'c', b'd', b'n', 4, b't', b'e', b's', b't', 0];
        m.extend_from_slice(&(target.len() as u16).to_be_bytes());
        let target_at = m.len();
        m.extend_from_slice(&target);
        for (ip, ttl) in [([198, 51, 100, 10], 300u32), ([198, 51, 100, 11], 20)] {
            m.extend_from_slice(&[0xC0, target_at as u8, 0, 1, 0, 1]);
            m.extend_from_slice(&ttl.to_be_bytes());
            m.extend_from_slice(&[0, 4]);
            m.extend_from_slice(&ip);
        }
        m
    }

    #[test]
    fn a_query_is_read_and_refused_with_its_question() {
        let q = query(0xBEEF, "Pypi.ORG", TYPE_A, true);
        let parsed = parse_query(&q).expect("query");
        assert_eq!(
            (parsed.id, parsed.name.as_str(), parsed.qtype),
            (0xBEEF, "pypi.org", TYPE_A)
        );
        let r = reply(&parsed, RCODE_REFUSED);
        assert_eq!(&r[..2], &[0xBE, 0xEF]);
        assert_eq!(r[2] & 0x80, 0x80, "QR");
        assert_eq!(r[2] & 0x01, 0x01, "RD copied");
        assert_eq!(r[3] & 0x0F, RCODE_REFUSED);
        assert_eq!(
            &r[4..12],
            &[0, 1, 0, 0, 0, 0, 0, 0],
            "one question, no records (no OPT)"
        );
        assert_eq!(&r[12..], &q[12..q.len() - 11], "the question as asked");
        assert!(answers(&r, &parsed), "a reply answers its query");
    }

    #[test]
    fn addresses_and_ttls_come_out_of_an_answer_through_a_cname() {
        let q = query(7, "a.test", TYPE_A, false);
        let a = answer(&q);
        let parsed = parse_query(&q).expect("query");
        assert!(answers(&a, &parsed));
        assert!(!answers(
            &a,
            &parse_query(&query(8, "a.test", TYPE_A, false)).expect("q")
        ));
        assert!(!answers(
            &a,
            &parse_query(&query(7, "b.test", TYPE_A, false)).expect("q")
        ));
        assert_eq!(
            answer_ipv4(&a).expect("answer"),
            [
                (Ipv4Addr::new(198, 51, 100, 10), 300),
                (Ipv4Addr::new(198, 51, 100, 11), 20)
            ]
        );
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        let q = query(1, "a.test", TYPE_A, false);
        for cut in 0..q.len() - 1 {
            assert!(parse_query(&q[..cut]).is_err(), "cut at {cut}");
        }
        let a = answer(&q);
        for cut in q.len()..a.len() - 1 {
            assert!(answer_ipv4(&a[..cut]).is_err(), "cut at {cut}");
        }
        // A pointer to itself, and a response sent as a query.
        let mut looped = q.clone();
        looped.truncate(HEADER);
        looped.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
        assert!(parse_query(&looped).is_err());
        let mut resp = q;
        resp[2] |= 0x80;
        assert_eq!(parse_query(&resp), Err(DnsError("a response, not a query")));
    }
}
