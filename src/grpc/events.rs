//! `ReadUserEvents`: the caller's own feed of user events (docs/design.md §2.6). The client is
//! the caller's key, so no client reads another's feed; the feed holds only events about users
//! that client signed in. Unary polling, not a stream held open: a blocking `XREAD` would hold
//! the one multiplexed Redis connection every call of the replica shares.

use prost_types::Timestamp;

use super::OAuthService;
use crate::config::Client;
use crate::error::ApiError;
use crate::proto;
use crate::push::UserEvent;
use crate::store::{EventId, UserEventRecord};

/// The most events one read answers.
const MAX_LIMIT: u32 = 500;

/// What a read answers when `limit` is 0.
const DEFAULT_LIMIT: u32 = 100;

impl OAuthService {
    pub(super) async fn read_user_events_inner(
        &self,
        client: &Client,
        req: proto::ReadUserEventsRequest,
    ) -> Result<proto::ReadUserEventsResponse, ApiError> {
        let after = match req.after.as_str() {
            "" => None,
            cursor => Some(
                EventId::parse(cursor)
                    .ok_or_else(|| ApiError::invalid("after", "not a cursor ReadUserEvents answered"))?,
            ),
        };
        let limit = match req.limit {
            0 => DEFAULT_LIMIT,
            n if n <= MAX_LIMIT => n,
            _ => return Err(ApiError::invalid("limit", "at most 500 (0: 100)")),
        };
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let page = self.store.read_user_events(&client.name, after, limit).await?;
        let read = u64::try_from(page.events.len()).unwrap_or(u64::MAX);
        self.metrics.user_events_read.with_label_values(&[client.name.as_str()]).inc_by(read);
        Ok(proto::ReadUserEventsResponse {
            events: page.events.into_iter().map(event_to_proto).collect(),
            next_cursor: page.next.map(|id| id.to_string()).unwrap_or_default(),
            gap: page.gap,
        })
    }
}

/// The proto form of a feed's event.
fn event_to_proto(record: UserEventRecord) -> proto::UserEvent {
    let kind = match UserEvent::ALL.into_iter().find(|e| e.as_str() == record.event) {
        Some(UserEvent::AuthorizationRevoked) => proto::UserEventKind::Revoked,
        Some(UserEvent::AccountCancelled) => proto::UserEventKind::AccountClosed,
        Some(UserEvent::InfoModified) => proto::UserEventKind::ProfileChanged,
        None => proto::UserEventKind::Unspecified,
    };
    let at_ms = record.acted_at_ms;
    let acted = Timestamp {
        seconds: at_ms.div_euclid(1000),
        nanos: i32::try_from(at_ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    };
    proto::UserEvent {
        app: record.app,
        openid: record.openid,
        kind: kind as i32,
        wechat_time: (record.wechat_time > 0).then(|| super::convert::timestamp(record.wechat_time)),
        acted_time: Some(acted),
    }
}
