//! Flows: their ids (tagged so that the id alone names its client and app, and the relay
//! tells wxauth's ids from made-up ones), their writes and reads, the relay's one round trip,
//! the start URL's move to a browser-bound id, and the open-flow cap (docs/design.md §2, §12.3).

use std::time::Duration;

use super::backend::Op;
use super::flow_cap::{self, Admission, FlowSlot};
use super::records::{CodeRecord, CodeRelay, CodeState, Flow, FlowUse, Relayed};
use super::{Store, StoreError, seal};
use crate::secrets::AuthCode;

/// Random characters of a flow id (≥ 128 bits): what makes it unguessable.
pub(super) const FLOW_ID_RANDOM: usize = 22;
/// Bytes of each of a flow id's two tags (in hex in the id).
pub(super) const FLOW_TAG: usize = seal::MIN_TAG_LEN;
/// Length of a flow id: [`FLOW_ID_RANDOM`] random characters, then the hex of two 64-bit tags:
/// the owner's (of the random characters, the client and the app: [`Store::flow_is_of`]) and
/// the relay's (of the random characters alone: the relay checks it knowing nothing else,
/// [`Store::is_flow_id`]). Ids made before the relay's tag (a 128-bit owner's tag in the same
/// 32 characters) still pass [`Store::flow_is_of`] (its first 64 bits are the owner's tag) but
/// not the relay.
pub const FLOW_ID_LEN: usize = FLOW_ID_RANDOM + 4 * FLOW_TAG;
/// Length of a start token (the `start` of a start URL): the flow id and the hex of a 64-bit
/// start key, the second half of the relay's tag, which the flow id does not show.
pub(crate) const START_TOKEN_LEN: usize = FLOW_ID_LEN + 2 * FLOW_TAG;
/// Random characters a browser-bound flow id adds to the id of the flow it was moved from.
pub(super) const BROWSER_SUFFIX: usize = 22;
/// Length of a browser-bound flow id ([`Store::bind_to_browser`]): the flow's id and
/// [`BROWSER_SUFFIX`] random characters, 76 of WeChat's 128 bytes of `state`.
pub(crate) const BOUND_FLOW_ID_LEN: usize = FLOW_ID_LEN + BROWSER_SUFFIX;
/// What a flow id's owner's tag is made for (tags of other purposes never verify as flow ids).
pub(super) const FLOW_ID_PURPOSE: &str = "flow id";
/// What a flow id's relay tag (and its start key) is made for.
const FLOW_RELAY_PURPOSE: &str = "flow id relay";
/// What a browser-bound flow's cookie is the tag of.
const FLOW_BROWSER_PURPOSE: &str = "flow browser";

impl Store {
    /// Stores a new flow for `ttl`. Returns false if the id is taken (never, for 128-bit ids).
    pub async fn put_flow(&self, flow_id: &str, flow: &Flow, ttl: Duration) -> Result<bool, StoreError> {
        let key = self.flow_key(flow_id);
        let sealed = self.seal(&key, flow)?;
        self.call(Op::CreateFlow, |b| b.create_flow(&key, &sealed, ttl)).await
    }

    /// Deletes a flow (one whose start the open-flow cap refused after it was written).
    pub async fn delete_flow(&self, flow_id: &str) -> Result<(), StoreError> {
        let key = self.flow_key(flow_id);
        self.call(Op::Del, |b| b.del(&key)).await
    }

    /// Counts one more flow started by `client` under its cap of `cap` flows per `ttl`
    /// (`flow.ttl`), at `now_ms` on the service clock: one pipelined round trip on the
    /// client's per-window counters, and a second one only when refused, to take the count
    /// back. Old windows stop counting on their own, with no cleanup job. A flow used early
    /// still counts until its window leaves the range: the cap bounds flows started, and is
    /// exact to one window (`ttl / 10`; [`super::flow_cap`] states the bound). A client with a
    /// cap of 2,000 or more is counted a block of places at a time, and the flows that take the
    /// places this replica still holds start with no round trip at all ([`flow_cap::block`]).
    pub async fn admit_flow(
        &self,
        client: &str,
        cap: u32,
        ttl: Duration,
        now_ms: i64,
    ) -> Result<Admission, StoreError> {
        let windows = flow_cap::Windows::at(ttl, now_ms);
        let block = flow_cap::block(cap);
        if block > 1 && self.inner.leases.take(client, windows.index()) {
            return Ok(windows.admitted());
        }
        let base = self.client_flows_key(client);
        let (current, others) = windows.keys(&base);
        let life = windows.life();
        let (count, counts) = self.call(Op::Admit, |b| b.admit(&current, block, &others, life)).await?;
        let (admission, granted) = windows.judge_block(cap, block, count, &counts);
        // What is not granted is taken back, or the client's retries would keep it refused. If
        // that fails (logged by `call`) the count over-refuses until its window leaves.
        if granted < block {
            let _ = self.call(Op::Release, |b| b.release(&current, block - granted, life)).await;
        }
        if granted > 1
            && let Some(unused) = self.inner.leases.keep(client, windows.index(), granted - 1)
        {
            // Held places of a window gone by: given back, so that they stop counting early.
            let key = windows.key(&base, unused.window);
            let _ = self.call(Op::Release, |b| b.release(&key, unused.places, life)).await;
        }
        Ok(admission)
    }

    /// Gives back a place [`Store::admit_flow`] counted, for a flow that was never written
    /// (its write failed): the client's cap counts only flows that exist.
    pub async fn release_flow_slot(&self, client: &str, slot: &FlowSlot) -> Result<(), StoreError> {
        let (key, life) = (slot.key(&self.client_flows_key(client)), slot.life());
        self.call(Op::Release, |b| b.release(&key, 1, life)).await
    }

    /// A new flow id for `client` in `app` ([`FLOW_ID_LEN`]): random characters, the owner's
    /// tag (of them, the client and the app) and the relay's tag (of them alone), under the
    /// sealing key. The id alone then proves which client and app a flow was started for, long
    /// after the flow itself has expired, without a read; and the relay tells a made-up id
    /// from one of wxauth's without knowing the client or the app.
    pub fn new_flow_id(&self, client: &str, app: &str) -> String {
        self.new_flow(client, app).0
    }

    /// [`Store::new_flow_id`] and the flow's start token ([`START_TOKEN_LEN`]): the id and
    /// the start key, the half of the relay's tag the id does not show. Only the start URL
    /// carries it, so a flow id seen elsewhere (a QR code's `state`, a callback URL) cannot
    /// start the flow in another browser.
    pub fn new_flow(&self, client: &str, app: &str) -> (String, String) {
        let random = crate::random_id(FLOW_ID_RANDOM);
        let owner = self.inner.keys.tag(&[FLOW_ID_PURPOSE, &random, client, app]);
        let relay = self.inner.keys.tag(&[FLOW_RELAY_PURPOSE, &random]);
        let id = [random.as_str(), &hex::encode(&owner[..FLOW_TAG]), &hex::encode(&relay[..FLOW_TAG])].concat();
        let start = [id.as_str(), &hex::encode(&relay[FLOW_TAG..2 * FLOW_TAG])].concat();
        (id, start)
    }

    /// Whether `flow_id` was made by [`Store::new_flow_id`] for `client` in `app` (under any
    /// configured sealing key). Checks the owner's tag only, so ids made before the relay's tag
    /// existed pass too.
    pub fn flow_is_of(&self, flow_id: &str, client: &str, app: &str) -> bool {
        if flow_id.len() != FLOW_ID_LEN || !flow_id.is_ascii() {
            return false;
        }
        let (random, owner) = (&flow_id[..FLOW_ID_RANDOM], &flow_id[FLOW_ID_RANDOM..FLOW_ID_RANDOM + 2 * FLOW_TAG]);
        hex::decode(owner).is_ok_and(|tag| self.inner.keys.verify_tag(&[FLOW_ID_PURPOSE, random, client, app], &tag))
    }

    /// Whether `state` is a flow id wxauth made (its relay tag checks), whoever its client and
    /// app: one tag computed, no store call. The relay asks this before it touches the store.
    pub fn is_flow_id(&self, state: &str) -> bool {
        if state.len() != FLOW_ID_LEN || !state.is_ascii() {
            return false;
        }
        let (random, relay) = (&state[..FLOW_ID_RANDOM], &state[FLOW_ID_RANDOM + 2 * FLOW_TAG..]);
        hex::decode(relay).is_ok_and(|tag| self.inner.keys.verify_tag(&[FLOW_RELAY_PURPOSE, random], &tag))
    }

    /// The flow id a start token starts, if the token is one wxauth made ([`Store::new_flow`]):
    /// the relay's whole tag (the id's half and the start key) checks. No store call.
    pub fn flow_of_start_token<'a>(&self, token: &'a str) -> Option<&'a str> {
        if token.len() != START_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        let random = &token[..FLOW_ID_RANDOM];
        let tag = [&token[FLOW_ID_RANDOM + 2 * FLOW_TAG..FLOW_ID_LEN], &token[FLOW_ID_LEN..]].concat();
        let valid = hex::decode(tag).is_ok_and(|tag| self.inner.keys.verify_tag(&[FLOW_RELAY_PURPOSE, random], &tag));
        valid.then(|| &token[..FLOW_ID_LEN])
    }

    /// What the browser that started a browser-bound flow holds (its cookie's value): the hex
    /// of the bound id's tag. Stateless: the relay checks it with [`Store::is_browser_of`].
    pub fn browser_tag(&self, bound_id: &str) -> String {
        hex::encode(self.inner.keys.tag(&[FLOW_BROWSER_PURPOSE, bound_id]))
    }

    /// Whether `cookie` is [`Store::browser_tag`] of `bound_id` (under any configured key).
    pub fn is_browser_of(&self, bound_id: &str, cookie: &str) -> bool {
        cookie.len() == 2 * seal::TAG_LEN
            && hex::decode(cookie).is_ok_and(|tag| self.inner.keys.verify_tag(&[FLOW_BROWSER_PURPOSE, bound_id], &tag))
    }

    /// The flow id a browser-bound id was moved from (the id the product holds, to which the
    /// relay binds codes), or the id itself.
    pub fn flow_id_of(state: &str) -> &str {
        if state.len() == BOUND_FLOW_ID_LEN { &state[..FLOW_ID_LEN] } else { state }
    }

    /// Moves an unused flow to a new browser-bound id ([`BOUND_FLOW_ID_LEN`]: the flow's id
    /// and random characters), keeping its remaining life: the old id stops relaying at once,
    /// and a second start of it finds nothing. Returns the new id, the flow and its remaining
    /// life; `None` when there is no such flow or it has relayed a callback already (then it is
    /// gone too: a start URL works before the flow's callbacks or not at all).
    pub async fn bind_to_browser(&self, flow_id: &str) -> Result<Option<(String, Flow, Duration)>, StoreError> {
        let key = self.flow_key(flow_id);
        let Some((sealed, uses, left)) = self.call(Op::TakeFlow, |b| b.take_flow(&key)).await? else {
            return Ok(None);
        };
        let Some(flow) = self.open::<Flow>(&key, &sealed) else {
            return Ok(None);
        };
        if uses > 0 || left.is_zero() {
            return Ok(None);
        }
        let bound = [flow_id, &crate::random_id(BROWSER_SUFFIX)].concat();
        let bound_key = self.flow_key(&bound);
        let sealed = self.seal(&bound_key, &flow)?;
        if !self.call(Op::CreateFlow, |b| b.create_flow(&bound_key, &sealed, left)).await? {
            return Ok(None);
        }
        Ok(Some((bound, flow, left)))
    }

    /// A flow as it is, without counting a callback or cutting its life (a code-less callback:
    /// a user who refused uses none of the flow's callbacks).
    pub async fn peek_flow(&self, flow_id: &str) -> Result<Option<Flow>, StoreError> {
        let key = self.flow_key(flow_id);
        let found = self.call(Op::ReadFlow, |b| b.read_flow(&key)).await?;
        Ok(found.and_then(|sealed| self.open(&key, &sealed)))
    }

    /// The relay's one round trip: reads the flow, counts the callback and, atomically, cuts
    /// the flow's remaining life to `grace` (the first callback starts the grace window,
    /// later ones within it read the same flow); and, together with that, binds `code` (if
    /// the callback has one) for `code_ttl` to the flow's id as the product holds it
    /// ([`Store::flow_id_of`]): the first flow to relay a code owns it, the same flow may relay
    /// it again, no other flow can. A callback past [`crate::relay::MAX_CALLBACKS`] binds
    /// nothing: a code it bound in the round trip is unbound before this returns (the relay
    /// refuses it, and the code reached no product). `None`: no such flow (and nothing is left
    /// behind for it).
    pub async fn relay(
        &self,
        flow_id: &str,
        grace: Duration,
        code: Option<&AuthCode>,
        code_ttl: Duration,
    ) -> Result<Option<Relayed>, StoreError> {
        let key = self.flow_key(flow_id);
        let Some(code) = code else {
            let found = self.call(Op::UseFlow, |b| b.use_flow(&key, grace)).await?;
            return Ok(found.and_then(|(sealed, cut, uses)| self.relayed(&key, &sealed, cut, uses, None)));
        };
        let owner = Self::flow_id_of(flow_id);
        let code_key = self.code_key(code);
        let record = CodeRecord { flow_id: owner.to_owned(), state: CodeState::Relayed };
        let binding = self.seal(&code_key, &record)?;
        let (found, existing) =
            self.call(Op::UseFlowBinding, |b| b.use_flow_binding(&key, grace, &code_key, &binding, code_ttl)).await?;
        let bound = match existing {
            None => CodeRelay::Bound,
            Some(sealed) => match self.open::<CodeRecord>(&code_key, &sealed) {
                Some(read) if read.flow_id == owner => CodeRelay::Again,
                // A record that does not open (another sealing key, tampering) binds nothing
                // we can check: refuse rather than guess.
                _ => CodeRelay::OtherFlow,
            },
        };
        let relayed = found.and_then(|(sealed, cut, uses)| self.relayed(&key, &sealed, cut, uses, Some(bound)));
        let past_budget = relayed.as_ref().is_some_and(|r| r.uses > crate::relay::MAX_CALLBACKS);
        if (relayed.is_none() || past_budget) && bound == CodeRelay::Bound {
            // No such flow, or a callback past the budget: the code is bound to nothing; unbind
            // it (only while it still holds this binding) rather than let made-up flow ids
            // leave records behind, or a refused callback hand a flow a code to exchange.
            self.call(Op::DelIfEq, |b| b.del_if_eq(&code_key, &binding)).await?;
        }
        Ok(relayed)
    }

    fn relayed(&self, key: &str, sealed: &[u8], cut: bool, uses: u64, code: Option<CodeRelay>) -> Option<Relayed> {
        let flow = self.open(key, sealed)?;
        let used = if cut { FlowUse::First } else { FlowUse::Repeat };
        Some(Relayed { flow, used, uses, code })
    }
}
