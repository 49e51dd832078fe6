package dev.wxauth.example;

import java.security.SecureRandom;
import java.util.HexFormat;

/**
 * The product's own trace for one of its request handlers. A service instrumented with
 * OpenTelemetry gets this from its SDK (the gRPC instrumentation injects the header); it is
 * written out here so the example needs no tracing set-up. Each gRPC call is a client span of
 * the handler's trace, and its id is the {@code traceparent} parent wxauth sees.
 */
final class Trace {
  private static final SecureRandom RANDOM = new SecureRandom();

  private final String traceId = randomHex(16);

  static String randomHex(int bytes) {
    byte[] b = new byte[bytes];
    RANDOM.nextBytes(b);
    return HexFormat.of().formatHex(b);
  }

  /** A W3C {@code traceparent} for one outgoing call: a new span id under this trace, sampled. */
  String childTraceparent() {
    return "00-" + traceId + "-" + randomHex(8) + "-01";
  }
}
