//! The TCP-ENO option (RFC 8547 section 4): codec for every suboption form
//! and the validity rules of the option syntax.
//!
//! In-band, the option bytes are exactly those a TCP option would carry,
//! kind byte and length byte included, so the negotiation transcript
//! (RFC 8547 4.8) is unchanged. Negotiation itself lives in
//! the `negotiation` module.

use super::error::Error;

/// TCP option kind of ENO.
pub const ENO_KIND: u8 = 0x45;
/// The largest option the one-byte length field can describe.
pub const MAX_OPTION_LEN: usize = 255;
/// The global suboption's passive-role bit `b`.
pub const GLOBAL_B: u8 = 0x01;
/// The global suboption's application-aware bit `a`.
pub const GLOBAL_A: u8 = 0x02;
/// The `v` bit of a TEP suboption byte: the suboption carries data.
pub const V_BIT: u8 = 0x80;
/// Most data a suboption behind a length byte can carry.
pub const MAX_LENGTH_BYTE_DATA: usize = 32;

/// One TEP suboption as it appeared in an option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TepSuboption {
    /// The suboption byte exactly as sent: TEP identifier and `v` bit.
    pub byte: u8,
    /// The suboption data (empty for a one-byte suboption).
    pub data: Vec<u8>,
}

impl TepSuboption {
    /// A suboption without data (`v = 0`).
    pub fn plain(id: u8) -> Self {
        TepSuboption {
            byte: id & !V_BIT,
            data: Vec::new(),
        }
    }

    /// A suboption with data (`v = 1`).
    pub fn with_data(id: u8, data: Vec<u8>) -> Self {
        TepSuboption {
            byte: id | V_BIT,
            data,
        }
    }

    /// The seven-bit TEP identifier.
    pub fn id(&self) -> u8 {
        self.byte & !V_BIT
    }

    /// The `v` bit.
    pub fn v(&self) -> bool {
        self.byte & V_BIT != 0
    }
}

/// A SYN-form ENO option: the bytes as they travel, and their parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnoOption {
    bytes: Vec<u8>,
    global: Option<u8>,
    teps: Vec<TepSuboption>,
}

impl EnoOption {
    /// Parses a whole option (kind, length, contents). The length byte must
    /// equal `bytes.len()`.
    ///
    /// Follows RFC 8547 4.1 to 4.4: the first global suboption counts and
    /// later ones are ignored; a missing one means an implicit 0x00; a
    /// length byte must be followed by a TEP byte with `v = 1` and must not
    /// run past the end; a `v = 1` TEP byte without a length byte takes the
    /// rest of the option as data. An ill-formed option is an error, which
    /// the negotiation treats as "ENO disabled".
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() < 2 || bytes[0] != ENO_KIND {
            return Err(Error::MalformedOption("not an ENO option"));
        }
        if bytes[1] as usize != bytes.len() {
            return Err(Error::MalformedOption("length byte does not match"));
        }
        let contents = &bytes[2..];
        let mut global = None;
        let mut teps = Vec::new();
        let mut i = 0;
        while i < contents.len() {
            let x = contents[i];
            match x {
                0x00..=0x1f => {
                    global.get_or_insert(x);
                    i += 1;
                }
                0x20..=0x7f => {
                    teps.push(TepSuboption::plain(x));
                    i += 1;
                }
                0x80..=0x9f => {
                    let len = (x & 0x1f) as usize + 1;
                    let tep = *contents
                        .get(i + 1)
                        .ok_or(Error::MalformedOption("length byte at the end"))?;
                    if tep < 0xa0 {
                        return Err(Error::MalformedOption(
                            "length byte not followed by a TEP with v=1",
                        ));
                    }
                    let data = contents
                        .get(i + 2..i + 2 + len)
                        .ok_or(Error::MalformedOption("length byte runs past the option"))?;
                    teps.push(TepSuboption {
                        byte: tep,
                        data: data.to_vec(),
                    });
                    i += 2 + len;
                }
                0xa0..=0xff => {
                    teps.push(TepSuboption {
                        byte: x,
                        data: contents[i + 1..].to_vec(),
                    });
                    i = contents.len();
                }
            }
        }
        Ok(EnoOption {
            bytes: bytes.to_vec(),
            global,
            teps,
        })
    }

    /// Encodes an option from a global suboption (omitted when `None`) and
    /// TEP suboptions in order. A suboption with data gets a length byte
    /// unless it is the last one (the cheapest encoding, RFC 8547 4.4).
    pub fn encode(global: Option<u8>, teps: &[TepSuboption]) -> Result<Self, Error> {
        let mut bytes = vec![ENO_KIND, 0];
        if let Some(g) = global {
            if g > 0x1f {
                return Err(Error::InvalidConfig("global suboption above 0x1f"));
            }
            bytes.push(g);
        }
        for (n, tep) in teps.iter().enumerate() {
            if !(0x20..=0x7f).contains(&tep.id()) {
                return Err(Error::InvalidConfig("TEP identifier outside 0x20..=0x7f"));
            }
            if tep.v() == tep.data.is_empty() {
                return Err(Error::InvalidConfig(
                    "v bit must be set exactly when there is data",
                ));
            }
            let last = n + 1 == teps.len();
            if tep.v() && !last {
                if tep.data.len() > MAX_LENGTH_BYTE_DATA {
                    return Err(Error::InvalidConfig(
                        "suboption data over 32 bytes must come last",
                    ));
                }
                bytes.push(0x80 | (tep.data.len() as u8 - 1));
            }
            bytes.push(tep.byte);
            bytes.extend_from_slice(&tep.data);
        }
        if bytes.len() > MAX_OPTION_LEN {
            return Err(Error::InvalidConfig("ENO option longer than 255 bytes"));
        }
        bytes[1] = bytes.len() as u8;
        EnoOption::parse(&bytes)
    }

    /// The option bytes as sent (kind and length included), the unit of the
    /// negotiation transcript.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The effective global suboption: the first one sent, or the implicit
    /// 0x00. The reserved `z` bits are kept but never interpreted.
    pub fn global(&self) -> u8 {
        self.global.unwrap_or(0)
    }

    /// Whether a global suboption was present in the bytes.
    pub fn has_explicit_global(&self) -> bool {
        self.global.is_some()
    }

    /// The `b` bit: set by the host playing role B.
    pub fn b(&self) -> bool {
        self.global() & GLOBAL_B != 0
    }

    /// The `a` bit: the sender is application-aware.
    pub fn a(&self) -> bool {
        self.global() & GLOBAL_A != 0
    }

    /// The TEP suboptions in order.
    pub fn teps(&self) -> &[TepSuboption] {
        &self.teps
    }

    /// A vacuous option carries no TEP suboption: ENO is supported but
    /// disabled (RFC 8547 4.6).
    pub fn is_vacuous(&self) -> bool {
        self.teps.is_empty()
    }

    /// How many suboptions name `id` (tcpcrypt defines no repetition, so a
    /// repeated TEP is invalid, RFC 8547 4.5).
    pub fn count(&self, id: u8) -> usize {
        self.teps.iter().filter(|t| t.id() == id).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_hex(s: &str) -> Result<EnoOption, Error> {
        EnoOption::parse(&hex::decode(s).unwrap())
    }

    #[test]
    fn rfc_transcript_example_options() {
        // RFC 8547 4.8: A sends only X25519, B answers b=1 and X25519.
        let a = parse_hex("450323").unwrap();
        assert!(!a.has_explicit_global());
        assert_eq!(a.global(), 0);
        assert_eq!(a.teps(), &[TepSuboption::plain(0x23)]);
        let b = parse_hex("45040123").unwrap();
        assert!(b.b());
        assert!(!b.a());
    }

    #[test]
    fn first_global_suboption_wins() {
        let o = parse_hex("4506021f0123").unwrap();
        assert_eq!(o.global(), 0x02);
        assert!(o.a() && !o.b());
    }

    #[test]
    fn length_byte_and_final_suboption() {
        // 0x82: three data bytes for 0xa1; then 0xa3 takes the rest.
        let o = parse_hex("450b82a1aabbcca3ddee01").unwrap();
        assert_eq!(o.teps().len(), 2);
        assert_eq!(
            o.teps()[0],
            TepSuboption::with_data(0x21, vec![0xaa, 0xbb, 0xcc])
        );
        // The final suboption's data runs to the end, global-looking bytes included.
        assert_eq!(
            o.teps()[1],
            TepSuboption::with_data(0x23, vec![0xdd, 0xee, 0x01])
        );
        assert_eq!(o.global(), 0);
    }

    #[test]
    fn v_bit_with_no_data_at_end_is_legal_syntax() {
        let o = parse_hex("4503a3").unwrap();
        assert_eq!(o.teps()[0].byte, 0xa3);
        assert!(o.teps()[0].data.is_empty());
    }

    #[test]
    fn ill_formed_options_are_rejected() {
        for bad in [
            "",           // nothing
            "44020000",   // wrong kind
            "4505",       // length byte too large
            "450423",     // length byte does not match
            "450380",     // length byte at the end
            "45048123",   // length byte followed by v=0 TEP
            "45048001",   // length byte followed by a global suboption
            "45058223aa", // length byte followed by v=0 TEP
            "450581a3aa", // length byte claims two bytes, one present
        ] {
            assert!(
                matches!(parse_hex(bad), Err(Error::MalformedOption(_))),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn encode_uses_length_bytes_only_before_the_last_suboption() {
        let teps = [
            TepSuboption::with_data(0x21, vec![1; 9]),
            TepSuboption::plain(0x23),
            TepSuboption::with_data(0x23, vec![2; 17]),
        ];
        let o = EnoOption::encode(Some(GLOBAL_A), &teps).unwrap();
        let b = o.as_bytes();
        assert_eq!(b[0], ENO_KIND);
        assert_eq!(b[1] as usize, b.len());
        assert_eq!(&b[2..5], &[0x02, 0x88, 0xa1]);
        assert_eq!(o.teps(), &teps);
    }

    #[test]
    fn encode_rejects_what_cannot_be_expressed() {
        let long = TepSuboption::with_data(0x21, vec![0; 33]);
        assert!(EnoOption::encode(None, &[long.clone(), TepSuboption::plain(0x23)]).is_err());
        // Over 32 bytes is fine as the final suboption.
        assert!(EnoOption::encode(None, &[TepSuboption::plain(0x23), long]).is_ok());
        assert!(EnoOption::encode(Some(0x20), &[]).is_err());
        assert!(EnoOption::encode(None, &[TepSuboption::plain(0x10)]).is_err());
        let huge = TepSuboption::with_data(0x21, vec![0; 300]);
        assert!(EnoOption::encode(None, &[huge]).is_err());
    }
}
