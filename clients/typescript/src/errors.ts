// Errors of the client: every answer that is not a success becomes a `FleetError`
// carrying the API's stable code (`{"error": {"code", "message"}}`), so callers branch
// on `code`, never on message text.

/** The API's documented error codes; others may be added, so `string` stays open. */
export type FleetErrorCode =
  | "bad_request"
  | "unauthorized"
  | "forbidden"
  | "not_found"
  | "method_not_allowed"
  | "timeout"
  | "conflict"
  | "booking_conflict"
  | "gone"
  | "too_large"
  | "unsupported_media_type"
  | "invalid"
  | "invalid_schedule"
  | "idempotency_key_reused"
  | "idempotency_key_in_use"
  | "rate_limited"
  | "quota_exceeded"
  | "unavailable"
  | "not_configured"
  | "internal"
  | (string & {});

/** An error answer of the Fleet API. */
export class FleetError extends Error {
  override readonly name = "FleetError";
  /** HTTP status. */
  readonly status: number;
  /** The API's stable machine-readable code (`http_<status>` when the body had none). */
  readonly code: FleetErrorCode;
  /** Seconds to wait before retrying (`Retry-After`, on 429 and 503), when sent. */
  readonly retryAfter: number | undefined;
  /** The whole error body (a 409 of a booking also lists the conflicting occurrences). */
  readonly body: unknown;

  constructor(status: number, code: FleetErrorCode, message: string, retryAfter?: number, body?: unknown) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
    this.body = body;
  }

  /** Whether retrying the same request later may succeed (429, 503, and 409 `idempotency_key_in_use`). */
  get retryable(): boolean {
    return this.status === 429 || this.status === 503 || this.code === "idempotency_key_in_use";
  }

  /** The error of `response`, from its already parsed body (if any). */
  static from(response: Response, body: unknown): FleetError {
    const detail = (body as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
    const code = typeof detail?.code === "string" ? detail.code : `http_${response.status}`;
    const message =
      typeof detail?.message === "string" ? detail.message : response.statusText || `HTTP ${response.status}`;
    const header = response.headers.get("retry-after");
    const retryAfter = header !== null && /^\d+$/.test(header) ? Number(header) : undefined;
    return new FleetError(response.status, code, `${code}: ${message}`, retryAfter, body);
  }

  /** The error of `response`, reading its body. */
  static async read(response: Response): Promise<FleetError> {
    let body: unknown;
    try {
      body = await response.json();
    } catch {
      body = undefined;
    }
    return FleetError.from(response, body);
  }
}

/** A wait (`jobs.wait`) that ran out of time before the job finished. */
export class FleetTimeoutError extends Error {
  override readonly name = "FleetTimeoutError";
  /** The job's state when the wait gave up. */
  readonly lastState: string | undefined;

  constructor(message: string, lastState?: string) {
    super(message);
    this.lastState = lastState;
  }
}
