package dev.wxauth.example;

import dev.wxauth.v1.WeChatOAuthServiceGrpc;
import dev.wxauth.v1.WeChatOAuthServiceGrpc.WeChatOAuthServiceBlockingStub;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.MetadataUtils;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.function.Function;

/** wxauth's gRPC API for one client key: every call authenticated, traced and bounded. */
final class Wxauth implements AutoCloseable {
  /** Every call's deadline. wxauth honours {@code grpc-timeout} and stops work given up on. */
  static final long DEADLINE_MS = 5000;

  private static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);
  private static final Metadata.Key<String> TRACEPARENT =
      Metadata.Key.of("traceparent", Metadata.ASCII_STRING_MARSHALLER);

  private final ManagedChannel channel;
  private final WeChatOAuthServiceBlockingStub stub;
  private final String key;
  /** Every (method, traceparent) sent, for the test to find wxauth's spans by. */
  final List<Map<String, String>> sent = new ArrayList<>();

  /**
   * Plaintext, inside the company's network as the other examples; {@code
   * TlsChannelCredentials.create()} where wxauth's listener has TLS.
   */
  Wxauth(String address, String key) {
    this.channel = Grpc.newChannelBuilder(address, InsecureChannelCredentials.create()).build();
    this.stub = WeChatOAuthServiceGrpc.newBlockingStub(channel);
    this.key = key;
  }

  /** Calls {@code method} (its name, and the stub's method) within {@code trace}. */
  <T> T call(String method, Trace trace, Function<WeChatOAuthServiceBlockingStub, T> rpc) {
    Metadata headers = new Metadata();
    headers.put(AUTHORIZATION, "Bearer " + key);
    String traceparent = trace.childTraceparent();
    headers.put(TRACEPARENT, traceparent);
    Map<String, String> call = new LinkedHashMap<>();
    call.put("method", method);
    call.put("traceparent", traceparent);
    sent.add(call);
    WeChatOAuthServiceBlockingStub bounded =
        stub.withDeadlineAfter(DEADLINE_MS, TimeUnit.MILLISECONDS)
            .withInterceptors(MetadataUtils.newAttachHeadersInterceptor(headers));
    try {
      return rpc.apply(bounded);
    } catch (StatusRuntimeException e) {
      throw new WxauthError(e);
    }
  }

  /**
   * {@link #call}, again after the RetryInfo delay while wxauth says a retry helps, at most
   * {@code attempts} times. Throws the last error, its {@code attempts} set.
   */
  <T> T callRetrying(
      String method, Trace trace, int attempts, Function<WeChatOAuthServiceBlockingStub, T> rpc)
      throws InterruptedException {
    for (int attempt = 1; ; attempt++) {
      try {
        return call(method, trace, rpc);
      } catch (WxauthError e) {
        e.attempts = attempt;
        if (!e.reaction().equals("retry") || attempt >= attempts) {
          throw e;
        }
        Thread.sleep(e.retryDelayMs);
      }
    }
  }

  @Override
  public void close() {
    try {
      channel.shutdown().awaitTermination(DEADLINE_MS, TimeUnit.MILLISECONDS);
    } catch (InterruptedException e) {
      // Closing is the last thing done: keep the interrupt for whoever asked for it.
      Thread.currentThread().interrupt();
    }
  }
}
