//! Entry `imap_search_args`: what imap-codec does not parse of SEARCH, SORT and THREAD
//! (`RETURN (…)`, `$`), taken out before it decodes (fuzz target `imap_search_args`).

use imap_codec::decode::Decoder;
use imap_codec::imap_types::command::CommandBody;
use imap_codec::CommandCodec;
use inetkit_runtime::fuzzing::take_byte;

use crate::search_args::{prepare, Prepared, Saved};

/// The folder the saved result is checked against: UIDs 2, 4, …, 16.
const FOLDER: [u32; 8] = [2, 4, 6, 8, 10, 12, 14, 16];

/// Entry `imap_search_args`: the first byte picks which of [`FOLDER`]'s UIDs are saved (one
/// bit each; 0 is an empty `$`), the rest is a command (with literals). Preparing it must not
/// panic; a rewritten command that imap-codec decodes had RETURN only if it is a SEARCH or a
/// SORT; a command is found to be on an empty `$` only when nothing is saved (every saved UID
/// is in the folder).
pub fn imap_search_args(data: &[u8]) {
    let (bits, command) = take_byte(data);
    let saved: Vec<u32> = FOLDER
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, &uid)| uid)
        .collect();
    let context = Saved {
        uids: &saved,
        folder: &FOLDER,
    };
    match prepare(command, Some(&context)) {
        Ok(Prepared::AsIs) | Err(_) => {}
        Ok(Prepared::CancelUpdate(tags)) => assert!(!tags.is_empty()),
        Ok(Prepared::OnNothing(name)) => {
            assert!(saved.is_empty(), "{name} on nothing with {saved:?}");
        }
        Ok(Prepared::Rewritten { bytes, returns }) => {
            let Ok((_, decoded)) = CommandCodec::default().decode(&bytes) else {
                return;
            };
            if let Some(r) = returns {
                // PARTIAL's range is positions, low first.
                assert!(r.partial.is_none_or(|(low, high)| 0 < low && low <= high));
                assert!(
                    matches!(
                        decoded.body,
                        CommandBody::Search { .. } | CommandBody::Sort { .. }
                    ),
                    "RETURN on {:?}",
                    decoded.body.name()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imap_search_args_inputs() {
        for input in [
            &b"\x05a SEARCH RETURN (MIN SAVE) $ SUBJECT $\r\n"[..],
            b"\x00a FETCH $ FLAGS\r\n",
            b"\xffa UID SORT RETURN (ALL) (DATE) UTF-8 UID $ {1}\r\n$\r\n",
            b"\x01a SEARCH RETURN (\r\n",
            b"\x01a SEARCH RETURN {5}\r\n",
            b"\x01a COPY \"$\r\n",
            b"\x01a SEARCH HEADER ~{2}\r\n$$ $\r\n",
            b"\x01a SEARCH RETURN (PARTIAL 9:2 UPDATE) $\r\n",
            b"\x01a CANCELUPDATE \"a\" b\r\n",
            b"",
        ] {
            imap_search_args(input);
        }
    }
}
