//! Path normalisation: the path and host a request is judged by.

use std::borrow::Cow;

use super::PathError;

/// The path a request is judged by.
///
/// Drops the query and fragment, percent-decodes once (`%252e` stays the literal `%2e`), merges
/// runs of `/`, resolves `.` and `..` and drops a trailing `/`. An empty path is `/`. Borrows
/// when the path is already in that form, which is the common case, so nothing is allocated.
///
/// Refuses what a gateway and an upstream could read differently ([`PathError`]): a `;`, a raw
/// `\`, a percent-encoded `/ \ . ; ? # %`, a control character, and a segment that ends in `.`
/// or whitespace once decoded (other than `.` and `..` themselves).
pub fn normalize_path(raw_path_and_query: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = raw_path_and_query.as_bytes();
    match bytes.first() {
        None | Some(b'?' | b'#') => return Ok(Cow::Borrowed("/")),
        Some(b'/') => {}
        Some(_) => return Err(PathError::NotAbsolute),
    }
    // One pass over the raw path: refuse what is refused as written, and tell whether the path
    // is already normal (no `%`, no non-ASCII byte, no empty, `.` or `..` segment).
    let mut normal = true;
    let mut segment = 1;
    let mut end = 1;
    while end < bytes.len() {
        match bytes[end] {
            b'?' | b'#' => break,
            b'/' => {
                normal &= plain_segment(&bytes[segment..end])?;
                segment = end + 1;
            }
            b';' => return Err(PathError::Semicolon),
            b'\\' => return Err(PathError::Backslash),
            b'%' | 0x80.. => normal = false,
            0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
            _ => {}
        }
        end += 1;
    }
    if end > 1 {
        normal &= plain_segment(&bytes[segment..end])?;
    }
    let path = &raw_path_and_query[..end];
    if normal {
        return Ok(Cow::Borrowed(path));
    }

    let decoded = percent_decode(path)?;
    let mut out = String::with_capacity(decoded.len());
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => match out.rfind('/') {
                Some(at) => out.truncate(at),
                None => return Err(PathError::AboveRoot),
            },
            _ => {
                if segment.ends_with(|c: char| c == '.' || c.is_whitespace()) {
                    return Err(PathError::AmbiguousSegment);
                }
                out.push('/');
                out.push_str(segment);
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// Whether one raw segment (without `%`) needs no work: `Ok(false)` for an empty, `.` or `..`
/// segment, an error for one that ends in `.` or whitespace.
fn plain_segment(segment: &[u8]) -> Result<bool, PathError> {
    match segment {
        [] | [b'.'] | [b'.', b'.'] => Ok(false),
        [.., b'.' | b' ' | b'\t'] => Err(PathError::AmbiguousSegment),
        _ => Ok(true),
    }
}

/// Decodes `%XX` once. An encoded `/ \ . ; ? # %` is refused: decoded, it would change how the
/// path splits or reads, and upstreams disagree on whether to decode it at all.
fn percent_decode(path: &str) -> Result<String, PathError> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex);
            let lo = bytes.get(i + 2).copied().and_then(hex);
            match (hi, lo) {
                (Some(hi), Some(lo)) => {
                    let b = hi << 4 | lo;
                    if b"/\\.;?#%".contains(&b) {
                        return Err(PathError::EncodedDelimiter);
                    }
                    out.push(b);
                }
                _ => return Err(PathError::InvalidEncoding),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    if out.iter().any(|b| b.is_ascii_control()) {
        return Err(PathError::ControlCharacter);
    }
    String::from_utf8(out).map_err(|_| PathError::InvalidUtf8)
}

/// The name a request host is matched by: `name[:port]` without the port and one trailing `.`
/// (`[v6]:port` keeps its brackets), or `None` when the host does not parse that way — an
/// empty label (`a..b`, `a..`), a character outside letters, digits, `-` and `_` (`%2e`), or a
/// port that is not 1 to 5 digits (`:abc`, `:8000:`, a bare `:`). Compare the result
/// ASCII-case-insensitively.
pub fn parse_host(host: &str) -> Option<&str> {
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => {
            let end = rest.find(']')? + 2;
            let inside = &host[1..end - 1];
            let valid = !inside.is_empty()
                && inside
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
            if !valid {
                return None;
            }
            (&host[..end], &host[end..])
        }
        None => match host.find(':') {
            Some(at) => (&host[..at], &host[at..]),
            None => (host, ""),
        },
    };
    if let Some(digits) = port.strip_prefix(':') {
        if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    } else if !port.is_empty() {
        return None;
    }
    if name.starts_with('[') {
        return Some(name);
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    let mut label = 0usize;
    for b in name.bytes() {
        match b {
            b'.' if label == 0 => return None,
            b'.' => label = 0,
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => label += 1,
            _ => return None,
        }
    }
    (label > 0 && name.len() <= 253).then_some(name)
}
