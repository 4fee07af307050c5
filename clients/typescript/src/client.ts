// The Fleet API client: one object per area (jobs, batches, workflows, events, endpoints,
// portfolios, calendar, comms, streams), each a thin typed layer over `openapi-fetch`
// and the generated `schema.ts`, so a request or answer that no longer fits the server's
// OpenAPI description fails to compile. Every answer that is not a success throws a
// `FleetError` with the API's code.

import createClient, { type Client } from "openapi-fetch";
import { FleetError, FleetTimeoutError } from "./errors.js";
import type { components, operations, paths } from "./schema.js";
import { readEventStream, type ReadStreamOptions } from "./sse.js";
import type { StreamEvent } from "./events.js";
import { streamUrl } from "./browser.js";

type Schemas = components["schemas"];
/** One job to enqueue. */
export type EnqueueRequest = Schemas["EnqueueRequest"];
/** An enqueued job's id and queue. */
export type Enqueued = Schemas["Enqueued"];
/** A job's state, attempts, errors, progress and result. */
export type JobView = Schemas["JobView"];
/** The outcome of a cancel. */
export type CancelView = Schemas["CancelView"];
/** A batch to create. */
export type BatchRequest = Schemas["BatchRequest"];
/** A batch's counters. */
export type BatchView = Schemas["BatchView"];
/** An event to publish to the tenant's webhook endpoints. */
export type EventRequest = Schemas["EventRequest"];
/** A published event and its delivery job. */
export type EventView = Schemas["EventView"];
/** A webhook endpoint to register. */
export type EndpointRequest = Schemas["EndpointRequest"];
/** A webhook endpoint (its `secret` only in the answer that created it). */
export type EndpointView = Schemas["EndpointView"];
/** A stream token's scope and life. */
export type StreamTokenRequest = Schemas["StreamTokenRequest"];
/** A stream token and its expiry (ms since the epoch). */
export type StreamToken = Schemas["StreamToken"];
/** A portfolio to analyse. */
export type PortfolioRequest = Schemas["PortfolioRequest"];
/** The workflow that processes a portfolio upload. */
export type PortfolioAccepted = Schemas["PortfolioAccepted"];
/** A workflow's state, counts and steps (each with its state, job and result). */
export type WorkflowView = Schemas["WorkflowView"];
/** A presigned upload to ask for. */
export type UploadRequest = Schemas["UploadRequest"];
/** A calendar source to register. */
export type CalendarSourceRequest = Schemas["CalendarSourceRequest"];
/** A supplier's calendar settings. */
export type SupplierSettings = Schemas["SupplierSettings"];
/** A booking to write. */
export type BookingRequest = Schemas["BookingRequest"];
/** A communication source to register. */
export type CommsSourceRequest = Schemas["SourceRequest"];
/** A client's contact details. */
export type ContactRequest = Schemas["ContactRequest"];
/** A page of a timeline. */
export type TimelinePage = Schemas["TimelinePage"];

/** States a job does not leave. */
export const FINAL_STATES: readonly string[] = ["succeeded", "dead", "cancelled", "expired"];

/** States a workflow does not leave. */
export const WORKFLOW_FINAL_STATES: readonly string[] = ["succeeded", "failed", "cancelled"];

/** How to reach Fleet. */
export interface FleetOptions {
  /** The API's base URL, e.g. `https://fleet.example.com`. */
  baseUrl: string;
  /** An API key (`fk_...`). Server side only: it must never reach a browser. */
  apiKey: string;
  /** The `fetch` to use (default the global one): for tests, proxies, or a framework's own. */
  fetch?: typeof globalThis.fetch;
  /** Allow the key in a page (refused by default: browsers get stream tokens instead). */
  dangerouslyAllowBrowser?: boolean;
}

/** Per-request options of the calls that create or start something. */
export interface CreateOptions {
  /** A retry with the same key and request gets the first answer and creates nothing
   * (kept 24 h; a different request with the same key is refused: `idempotency_key_reused`). */
  idempotencyKey?: string;
}

/** How long and how often `jobs.wait` looks. */
export interface WaitOptions {
  /** Give up after this long (default 30,000 ms) with a `FleetTimeoutError`. */
  timeoutMs?: number;
  /** First pause between reads (default 100 ms, doubling up to 2 s). */
  intervalMs?: number;
  /** Stops waiting (rejects with the signal's reason). */
  signal?: AbortSignal;
}

type Answer<T> = { data?: T; error?: unknown; response: Response };

/** Throws the answer's `FleetError` unless it succeeded; returns its body. */
async function ok<T>(call: Promise<Answer<T>>): Promise<T> {
  const { data, error, response } = await call;
  if (!response.ok) throw FleetError.from(response, error);
  return data as T;
}

function headersOf(options: CreateOptions | undefined): Record<string, string> {
  return options?.idempotencyKey === undefined ? {} : { "Idempotency-Key": options.idempotencyKey };
}

/** A client of Fleet's HTTP API, authenticated with an API key. Server side only. */
export class Fleet {
  /** The typed `openapi-fetch` client underneath, for calls this class does not wrap. */
  readonly raw: Client<paths>;
  readonly #baseUrl: string;
  readonly #apiKey: string;
  readonly #fetch: typeof globalThis.fetch | undefined;

  constructor(options: FleetOptions) {
    if (!options.apiKey) throw new TypeError("Fleet: apiKey is required");
    const inPage = typeof (globalThis as { document?: unknown }).document !== "undefined";
    if (inPage && !options.dangerouslyAllowBrowser) {
      throw new TypeError(
        "Fleet: an API key must not be used in a browser; have your server create a stream token " +
          "(fleet.streams.createToken) and open it with openEventStream from '@fleet/client/browser'",
      );
    }
    this.#baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.#apiKey = options.apiKey;
    this.#fetch = options.fetch;
    this.raw = createClient<paths>({
      baseUrl: this.#baseUrl,
      headers: { Authorization: `Bearer ${options.apiKey}` },
      ...(options.fetch ? { fetch: options.fetch } : {}),
    });
  }

  /** Jobs: enqueue one or many, read, cancel, wait for the end. */
  readonly jobs = {
    /** Enqueue one job; with `idempotencyKey`, a retried request returns the same job. */
    enqueue: (job: EnqueueRequest, options?: CreateOptions): Promise<Enqueued> =>
      ok(this.raw.POST("/v1/jobs", { body: job, headers: headersOf(options) })),
    /** Enqueue up to 1000 jobs at once; ids come back in request order. */
    enqueueMany: (jobs: EnqueueRequest[], options?: CreateOptions): Promise<Enqueued[]> =>
      ok(this.raw.POST("/v1/jobs/bulk", { body: { jobs }, headers: headersOf(options) })).then((r) => r.jobs),
    /** Read a job (404 `not_found` once it has expired, or when it is another tenant's). */
    get: (queue: string, id: string): Promise<JobView> =>
      ok(this.raw.GET("/v1/jobs/{queue}/{id}", { params: { path: { queue, id } } })),
    /** Cancel a job that has not finished (`already_finished` otherwise). */
    cancel: (queue: string, id: string): Promise<CancelView> =>
      ok(this.raw.DELETE("/v1/jobs/{queue}/{id}", { params: { path: { queue, id } } })),
    /** Reads the job until it is in a final state (succeeded, dead, cancelled, expired) and
     * returns it. For many jobs or live progress, follow `streams.events()` instead. */
    wait: async (queue: string, id: string, options: WaitOptions = {}): Promise<JobView> => {
      const deadline = Date.now() + (options.timeoutMs ?? 30_000);
      let interval = options.intervalMs ?? 100;
      for (;;) {
        options.signal?.throwIfAborted();
        const job = await this.jobs.get(queue, id);
        if (FINAL_STATES.includes(job.state)) return job;
        const left = deadline - Date.now();
        if (left <= 0) {
          throw new FleetTimeoutError(`job ${queue}/${id} is still ${job.state}`, job.state);
        }
        await new Promise((resolve) => setTimeout(resolve, Math.min(interval, left)));
        interval = Math.min(interval * 2, 2000);
      }
    },
  };

  /** Batches: jobs with shared progress and callbacks. */
  readonly batches = {
    /** Create a batch of up to 1000 jobs. */
    create: (batch: BatchRequest, options?: CreateOptions): Promise<BatchView> =>
      ok(this.raw.POST("/v1/batches", { body: batch, headers: headersOf(options) })),
    /** Read a batch's counters. */
    get: (id: string): Promise<BatchView> => ok(this.raw.GET("/v1/batches/{id}", { params: { path: { id } } })),
    /** Follow a batch's counters: `progress` events, then `done` (callbacks enqueued) or
     * `gone`, after which the iteration ends. */
    events: (id: string, options: Omit<ReadStreamOptions, "after"> = {}): AsyncIterable<StreamEvent> =>
      this.#untilDone(this.#stream(`/v1/batches/${encodeURIComponent(id)}/events`, options)),
  };

  /** Events published to the tenant's webhook endpoints. */
  readonly events = {
    /** Publish an event; every subscribed endpoint gets a signed delivery. */
    publish: (event: EventRequest, options?: CreateOptions): Promise<EventView> =>
      ok(this.raw.POST("/v1/events", { body: event, headers: headersOf(options) })),
  };

  /** Webhook endpoints. */
  readonly endpoints = {
    /** Register an endpoint; the answer holds its signing secret, shown this once. */
    create: (endpoint: EndpointRequest, options?: CreateOptions): Promise<EndpointView> =>
      ok(this.raw.POST("/v1/endpoints", { body: endpoint, headers: headersOf(options) })),
    /** The tenant's endpoints. */
    list: (): Promise<EndpointView[]> => ok(this.raw.GET("/v1/endpoints", {})),
    /** Remove an endpoint. */
    delete: async (id: string): Promise<void> => {
      await ok(this.raw.DELETE("/v1/endpoints/{id}", { params: { path: { id } } }));
    },
    /** Rotate an endpoint's signing secret (the old one stays valid for the overlap asked for). */
    rotateSecret: (id: string, body: Schemas["RotateRequest"], options?: CreateOptions) =>
      ok(this.raw.POST("/v1/endpoints/{id}/secrets", { params: { path: { id } }, body, headers: headersOf(options) })),
    /** Enable an endpoint again after Fleet disabled it. */
    enable: (id: string, body: Schemas["EnableRequest"], options?: CreateOptions) =>
      ok(this.raw.POST("/v1/endpoints/{id}/enable", { params: { path: { id } }, body, headers: headersOf(options) })),
  };

  /** Workflows: read one step by step, wait for its end, cancel it. */
  readonly workflows = {
    /** A workflow's state, counts and every step (404 `not_found` once expired, or another tenant's). */
    get: (id: string): Promise<WorkflowView> =>
      ok(this.raw.GET("/v1/workflows/{id}", { params: { path: { id } } })) as Promise<WorkflowView>,
    /** Cancel a workflow as a whole. */
    cancel: (id: string) => ok(this.raw.DELETE("/v1/workflows/{id}", { params: { path: { id } } })),
    /** Reads the workflow until it has ended (succeeded, failed, cancelled) and returns it. */
    wait: async (id: string, options: WaitOptions = {}): Promise<WorkflowView> => {
      const deadline = Date.now() + (options.timeoutMs ?? 30_000);
      let interval = options.intervalMs ?? 100;
      for (;;) {
        options.signal?.throwIfAborted();
        const workflow = await this.workflows.get(id);
        if (WORKFLOW_FINAL_STATES.includes(workflow.state)) return workflow;
        const left = deadline - Date.now();
        if (left <= 0) throw new FleetTimeoutError(`workflow ${id} is still ${workflow.state}`, workflow.state);
        await new Promise((resolve) => setTimeout(resolve, Math.min(interval, left)));
        interval = Math.min(interval * 2, 2000);
      }
    },
  };

  /** Portfolios: image analysis and variants. */
  readonly portfolios = {
    /** Analyse a portfolio's images and make the variants of those that are not
     * near-duplicates of a sharper one, as a workflow: follow it with `workflows.get` / `wait`. */
    create: (portfolio: PortfolioRequest, options?: CreateOptions): Promise<PortfolioAccepted> =>
      ok(this.raw.POST("/v1/portfolios", { body: portfolio, headers: headersOf(options) })),
    /** A portfolio's images and their analyses, a page at a time. */
    get: (portfolio: string, query?: operations["get_portfolio"]["parameters"]["query"]) =>
      ok(this.raw.GET("/v1/portfolios/{portfolio}", { params: { path: { portfolio }, query } })),
    /** A presigned URL to upload an image to (S3 stores only; 501 otherwise). */
    createUpload: (upload: UploadRequest, options?: CreateOptions) =>
      ok(this.raw.POST("/v1/uploads", { body: upload, headers: headersOf(options) })),
  };

  /** Calendars: sources, suppliers' settings, occurrences, conflicts, bookings. */
  readonly calendar = {
    createSource: (source: CalendarSourceRequest, options?: CreateOptions) =>
      ok(this.raw.POST("/v1/calendar/sources", { body: source, headers: headersOf(options) })),
    listSources: (query?: operations["calendar_list_sources"]["parameters"]["query"]) =>
      ok(this.raw.GET("/v1/calendar/sources", { params: { query } })),
    getSource: (id: string) => ok(this.raw.GET("/v1/calendar/sources/{id}", { params: { path: { id } } })),
    deleteSource: async (id: string): Promise<void> => {
      await ok(this.raw.DELETE("/v1/calendar/sources/{id}", { params: { path: { id } } }));
    },
    /** Sync a source now (the same job comes back while one is pending). */
    syncSource: (id: string, options?: CreateOptions) =>
      ok(this.raw.POST("/v1/calendar/sources/{id}/sync", { params: { path: { id } }, headers: headersOf(options) })),
    releaseSource: (id: string, options?: CreateOptions) =>
      ok(this.raw.POST("/v1/calendar/sources/{id}/release", { params: { path: { id } }, headers: headersOf(options) })),
    getSupplier: (supplier: string) =>
      ok(this.raw.GET("/v1/calendar/suppliers/{supplier}", { params: { path: { supplier } } })),
    putSupplier: (supplier: string, settings: SupplierSettings) =>
      ok(this.raw.PUT("/v1/calendar/suppliers/{supplier}", { params: { path: { supplier } }, body: settings })),
    occurrences: (supplier: string, query?: operations["occurrences"]["parameters"]["query"]) =>
      ok(this.raw.GET("/v1/calendar/suppliers/{supplier}/occurrences", { params: { path: { supplier }, query } })),
    conflicts: (supplier: string) =>
      ok(this.raw.GET("/v1/calendar/suppliers/{supplier}/conflicts", { params: { path: { supplier } } })),
    /** Write a booking; 409 `conflict` (with the busy occurrences in `error.body`) unless `force`. */
    putBooking: (supplier: string, id: string, booking: BookingRequest, query?: { force?: boolean }) =>
      ok(
        this.raw.PUT("/v1/calendar/suppliers/{supplier}/bookings/{id}", {
          params: { path: { supplier, id }, query },
          body: booking,
        }),
      ),
    getBooking: (supplier: string, id: string) =>
      ok(this.raw.GET("/v1/calendar/suppliers/{supplier}/bookings/{id}", { params: { path: { supplier, id } } })),
    deleteBooking: (supplier: string, id: string) =>
      ok(this.raw.DELETE("/v1/calendar/suppliers/{supplier}/bookings/{id}", { params: { path: { supplier, id } } })),
  };

  /** Communications: mail and SMS sources, contacts, clients' timelines. */
  readonly comms = {
    createSource: (source: CommsSourceRequest, options?: CreateOptions) =>
      ok(this.raw.POST("/v1/comms/sources", { body: source, headers: headersOf(options) })),
    listSources: (query?: operations["comms_list_sources"]["parameters"]["query"]) =>
      ok(this.raw.GET("/v1/comms/sources", { params: { query } })),
    getSource: (id: string) => ok(this.raw.GET("/v1/comms/sources/{id}", { params: { path: { id } } })),
    deleteSource: async (id: string): Promise<void> => {
      await ok(this.raw.DELETE("/v1/comms/sources/{id}", { params: { path: { id } } }));
    },
    syncSource: (id: string, options?: CreateOptions) =>
      ok(this.raw.POST("/v1/comms/sources/{id}/sync", { params: { path: { id } }, headers: headersOf(options) })),
    quarantine: (id: string) => ok(this.raw.GET("/v1/comms/sources/{id}/quarantine", { params: { path: { id } } })),
    entries: (id: string, query?: operations["source_entries"]["parameters"]["query"]) =>
      ok(this.raw.GET("/v1/comms/sources/{id}/entries", { params: { path: { id }, query } })),
    /** Create or update a client's contact details (addresses and numbers that link messages to them). */
    putContact: (contact: ContactRequest, options?: CreateOptions) =>
      ok(this.raw.POST("/v1/comms/contacts", { body: contact, headers: headersOf(options) })),
    timeline: (client: string, query?: operations["client_timeline"]["parameters"]["query"]): Promise<TimelinePage> =>
      ok(this.raw.GET("/v1/comms/clients/{client}/timeline", { params: { path: { client }, query } })),
  };

  /** The tenant's live event stream. */
  readonly streams = {
    /** Exchange the API key for a short-lived token that opens `/v1/stream` and nothing
     * else: hand it (never the key) to a browser, which opens it with `openEventStream`. */
    createToken: (request: StreamTokenRequest = {}): Promise<StreamToken> =>
      ok(this.raw.POST("/v1/stream/tokens", { body: request })),
    /** The URL a browser opens with `EventSource` for `token`. */
    url: (token: string, after?: string): string => streamUrl(this.#baseUrl, token, after),
    /** Follow the tenant's events (server side, with the API key); resumes by itself
     * after a dropped connection. Stop with `options.signal` or by leaving the loop. */
    events: (options: ReadStreamOptions = {}): AsyncIterable<StreamEvent> => this.#stream("/v1/stream", options),
  };

  #stream(path: string, options: ReadStreamOptions): AsyncGenerator<StreamEvent, void, undefined> {
    const fetchFn = options.fetch ?? this.#fetch;
    return readEventStream(`${this.#baseUrl}${path}`, { Authorization: `Bearer ${this.#apiKey}` }, {
      ...options,
      ...(fetchFn ? { fetch: fetchFn } : {}),
    });
  }

  async *#untilDone(events: AsyncGenerator<StreamEvent, void, undefined>): AsyncGenerator<StreamEvent, void, undefined> {
    for await (const event of events) {
      yield event;
      if (event.type === "done" || event.type === "gone") return;
    }
  }
}

/** Follows `/v1/stream` with a stream token from any JavaScript runtime that has `fetch`
 * (e.g. a Node service that was handed a token rather than a key). */
export function streamWithToken(
  baseUrl: string,
  token: string,
  options: ReadStreamOptions = {},
): AsyncGenerator<StreamEvent, void, undefined> {
  return readEventStream(streamUrl(baseUrl, token), {}, options);
}
