//! The per-socket record the BPF program and user space share (`struct
//! eno_sk` in `bpf/eno.bpf.c`): one layout, mirrored here byte for byte.

/// The record's size.
pub const LEN: usize = 112;
/// The longest ENO option a SYN can carry beside Linux's own options.
pub const MAX_SYN_OPTION: usize = 20;
/// The longest answer template: B's global byte and eight TEPs.
pub const MAX_TEMPLATE: usize = 9;

const STATE: usize = 0;
const OUTCOME: usize = 1;
const SYN_LEN: usize = 2;
const SYNACK_LEN: usize = 3;
const TMPL_LEN: usize = 4;
const ACK_ENO: usize = 5;
const DUAL_STACK: usize = 6;
const SYN: usize = 8;
const SYNACK: usize = 48;
const TMPL: usize = 88;
const LISTENER: usize = 104;

const STATE_OFFER: u8 = 1;
const STATE_LISTEN: u8 = 2;
const STATE_ACCEPTED: u8 = 3;

const OUTCOME_PENDING: u8 = 0;
const OUTCOME_ENO: u8 = 1;
const OUTCOME_NO_ENO: u8 = 2;
const OUTCOME_NO_SPACE: u8 = 3;
const OUTCOME_FAST_OPEN: u8 = 4;
const OUTCOME_UNANSWERED: u8 = 5;
const OUTCOME_REJECTED: u8 = 6;

/// A connecting socket's offer: its SYN-form ENO option.
pub fn offer(syn_option: &[u8]) -> [u8; LEN] {
    let mut r = [0u8; LEN];
    r[STATE] = STATE_OFFER;
    r[SYN_LEN] = syn_option.len() as u8;
    r[SYN..SYN + syn_option.len()].copy_from_slice(syn_option);
    r
}

/// A listening socket's answer template: B's global suboption byte, then
/// its TEP identifiers, most preferred first; whether it is an IPv6
/// socket that accepts IPv4 too (only then does it answer IPv4 SYNs to
/// its port).
pub fn listen(global: u8, teps_by_preference: &[u8], dual_stack: bool) -> [u8; LEN] {
    let mut r = [0u8; LEN];
    r[STATE] = STATE_LISTEN;
    r[DUAL_STACK] = u8::from(dual_stack);
    r[TMPL_LEN] = 1 + teps_by_preference.len() as u8;
    r[TMPL] = global;
    r[TMPL + 1..TMPL + 1 + teps_by_preference.len()].copy_from_slice(teps_by_preference);
    r
}

/// What the kernel did with a socket's ENO option.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The program has not seen the connection (it is not attached to
    /// this socket's cgroup) or it has not ended its handshake.
    Pending,
    /// ENO in both SYNs: A's SYN-form option and B's SYN-ACK option, kind
    /// and length bytes included (the transcript, in that order).
    Negotiated {
        /// A's SYN-form option.
        syn: Vec<u8>,
        /// B's SYN-ACK option.
        synack: Vec<u8>,
        /// Accepting side: A's third segment carried an ENO option.
        ack_had_eno: bool,
        /// Accepting side: the socket cookie of the listener that answered
        /// (the owner of the resumption identifiers it may answer to).
        listener: Option<u64>,
    },
    /// The SYN-ACK (or, accepting, the SYN) carried no ENO option.
    PeerSentNone,
    /// The SYN had no room for the option; it was sent without.
    NoSpace,
    /// The SYN carried data (TCP Fast Open); ENO was left out.
    FastOpen,
    /// Accepting side: A's third segment carried ENO, but no answer of
    /// ours is known (it was lost or evicted). A believes ENO is on: the
    /// connection must not be taken for a plain one.
    Unanswered,
    /// Connecting side: the SYN-ACK's option cannot enable ENO (no b bit,
    /// no TEP, or a suboption A did not offer); ENO is disabled.
    Rejected,
}

/// Whether the program answers the SYNs of a listening socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listening {
    /// Its template is in the program's table of listeners: its SYN-ACKs
    /// answer ENO.
    Answering,
    /// The table is full (the machine's other listeners, perhaps another
    /// user's): its SYN-ACKs carry no ENO.
    TableFull,
    /// The program has not seen it listen (it is not attached to the
    /// socket's cgroup, or the socket gave no template).
    NotSeen,
}

/// Reads a listening socket's record as the program left it.
pub fn listening(r: &[u8; LEN]) -> Listening {
    match (r[STATE], r[OUTCOME]) {
        (STATE_LISTEN, OUTCOME_ENO) => Listening::Answering,
        (STATE_LISTEN, OUTCOME_NO_SPACE) => Listening::TableFull,
        _ => Listening::NotSeen,
    }
}

/// Reads a record as the program left it.
pub fn outcome(r: &[u8; LEN]) -> Outcome {
    let syn = || r[SYN..SYN + usize::from(r[SYN_LEN]).min(40)].to_vec();
    let synack = || r[SYNACK..SYNACK + usize::from(r[SYNACK_LEN]).min(40)].to_vec();
    match (r[STATE], r[OUTCOME]) {
        (STATE_OFFER | STATE_ACCEPTED, OUTCOME_ENO) => Outcome::Negotiated {
            syn: syn(),
            synack: synack(),
            ack_had_eno: r[STATE] == STATE_ACCEPTED && r[ACK_ENO] != 0,
            listener: (r[STATE] == STATE_ACCEPTED).then(|| {
                u64::from_ne_bytes(r[LISTENER..LISTENER + 8].try_into().expect("8 bytes"))
            }),
        },
        (_, OUTCOME_NO_ENO) => Outcome::PeerSentNone,
        (_, OUTCOME_NO_SPACE) => Outcome::NoSpace,
        (_, OUTCOME_FAST_OPEN) => Outcome::FastOpen,
        (_, OUTCOME_UNANSWERED) => Outcome::Unanswered,
        (_, OUTCOME_REJECTED) => Outcome::Rejected,
        (_, OUTCOME_PENDING) | (_, _) => Outcome::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offer_reads_back_pending_until_the_program_answers() {
        let mut r = offer(&[69, 4, 0x00, 0x23]);
        assert_eq!(outcome(&r), Outcome::Pending);
        // What the program writes after a SYN-ACK with ENO.
        r[OUTCOME] = OUTCOME_ENO;
        r[SYNACK_LEN] = 4;
        r[SYNACK..SYNACK + 4].copy_from_slice(&[69, 4, 0x01, 0x23]);
        assert_eq!(
            outcome(&r),
            Outcome::Negotiated {
                syn: vec![69, 4, 0x00, 0x23],
                synack: vec![69, 4, 0x01, 0x23],
                ack_had_eno: false,
                listener: None,
            }
        );
    }

    #[test]
    fn a_listener_reads_back_not_seen_until_the_program_takes_its_template() {
        let mut r = listen(0x01, &[0x23], false);
        assert_eq!(listening(&r), Listening::NotSeen);
        r[OUTCOME] = OUTCOME_ENO;
        assert_eq!(listening(&r), Listening::Answering);
        r[OUTCOME] = OUTCOME_NO_SPACE;
        assert_eq!(listening(&r), Listening::TableFull);
        assert_eq!(listening(&offer(&[69, 2, 0, 0x23])), Listening::NotSeen);
    }

    #[test]
    fn a_template_lays_out_global_then_teps() {
        let r = listen(0x01, &[0x23, 0x21], true);
        assert_eq!(r[STATE], STATE_LISTEN);
        assert_eq!(&r[TMPL_LEN..TMPL_LEN + 1], &[3]);
        assert_eq!(&r[TMPL..TMPL + 3], &[0x01, 0x23, 0x21]);
    }
}
