package dev.wxauth.example;

import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.BadRequest;
import com.google.rpc.ErrorInfo;
import com.google.rpc.RetryInfo;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.TreeMap;

/** A failed wxauth call, with what {@code grpc-status-details-bin} says about it. */
final class WxauthError extends RuntimeException {
  private static final long serialVersionUID = 1L;

  /** The gRPC status code's name (UNAVAILABLE, FAILED_PRECONDITION, ...). */
  final String code;
  /** google.rpc.ErrorInfo.reason: the stable value to branch on (null without ErrorInfo). */
  String reason;
  /** ErrorInfo.metadata (errcode, errmsg, family, ...). */
  final Map<String, String> metadata = new TreeMap<>();
  /** google.rpc.BadRequest: field -> what is wrong. */
  final Map<String, String> fieldViolations = new TreeMap<>();
  /** google.rpc.RetryInfo's delay in milliseconds: set only where retrying helps. */
  Long retryDelayMs;
  /** How many times the call was made. */
  int attempts = 1;

  WxauthError(StatusRuntimeException error) {
    super(error.getStatus().getDescription(), error);
    code = error.getStatus().getCode().name();
    // StatusProto reads the google.rpc.Status of the `grpc-status-details-bin` trailer.
    com.google.rpc.Status status = StatusProto.fromThrowable(error);
    if (status == null) {
      return;
    }
    for (Any any : status.getDetailsList()) {
      try {
        if (any.is(ErrorInfo.class)) {
          ErrorInfo info = any.unpack(ErrorInfo.class);
          reason = info.getReason();
          metadata.putAll(info.getMetadataMap());
        } else if (any.is(BadRequest.class)) {
          for (BadRequest.FieldViolation v : any.unpack(BadRequest.class).getFieldViolationsList()) {
            fieldViolations.put(v.getField(), v.getDescription());
          }
        } else if (any.is(RetryInfo.class)) {
          com.google.protobuf.Duration delay = any.unpack(RetryInfo.class).getRetryDelay();
          retryDelayMs = delay.getSeconds() * 1000 + (delay.getNanos() + 999_999) / 1_000_000;
        }
        // Other details are ignored, as new ones may be added.
      } catch (InvalidProtocolBufferException e) {
        // A detail that does not decode is skipped: the code and the others still stand.
      }
    }
  }

  /**
   * What the product does about a failed call: the one place it branches on wxauth's reasons.
   *
   * <ul>
   *   <li>{@code retry}: wxauth sent RetryInfo (STORE_UNAVAILABLE, WECHAT_UNAVAILABLE, the rate
   *       limits): the same call after the delay, a few times, within the user's patience.
   *   <li>{@code sign_in_again}: the code is spent or was never this flow's (SIGN_IN_AGAIN: the
   *       exchange was sent and its answer lost, so WeChat may have spent the code). Never retry
   *       the exchange: send the user to "Sign in with WeChat" again (a new flow, a new code).
   *   <li>{@code reauthorize}: the user's stored token is gone or dead (REAUTHORIZATION_REQUIRED:
   *       the refresh token expired or was revoked; TOKEN_NOT_FOUND). The user consents again.
   *   <li>{@code fix_request}: a bug or a config gap on the product's side (INVALID_ARGUMENT with
   *       BadRequest naming the fields, an app or return URL not allowed, a wrong key). Log it;
   *       never retry.
   * </ul>
   */
  String reaction() {
    if (retryDelayMs != null) {
      return "retry";
    }
    if (reason == null) {
      return "fail";
    }
    return switch (reason) {
      case "SIGN_IN_AGAIN", "CODE_NOT_FROM_FLOW", "INVALID_CODE", "CODE_EXPIRED", "CODE_USED" ->
          "sign_in_again";
      case "REAUTHORIZATION_REQUIRED", "TOKEN_NOT_FOUND", "SCOPE_NOT_GRANTED" -> "reauthorize";
      case "INVALID_ARGUMENT", "RETURN_URL_NOT_ALLOWED", "APP_NOT_ALLOWED",
          "CLIENT_UNAUTHENTICATED", "APP_MISCONFIGURED" -> "fix_request";
      default -> "fail";
    };
  }

  /** The short form the example reports. */
  Map<String, Object> summary() {
    Map<String, Object> summary = new LinkedHashMap<>();
    summary.put("code", code);
    summary.put("reason", reason);
    summary.put("action", reaction());
    return summary;
  }

  @Override
  public String toString() {
    return "WxauthError " + summary() + ": " + getMessage();
  }
}
