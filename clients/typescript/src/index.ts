// Fleet's TypeScript client. Server side: `Fleet` (an API key). Browser side:
// `openEventStream` from `@fleet/client/browser` (a stream token, never a key).

export { Fleet, FINAL_STATES, streamWithToken, WORKFLOW_FINAL_STATES } from "./client.js";
export type {
  BatchRequest,
  BatchView,
  BookingRequest,
  CalendarSourceRequest,
  CancelView,
  CommsSourceRequest,
  ContactRequest,
  CreateOptions,
  EndpointRequest,
  EndpointView,
  Enqueued,
  EnqueueRequest,
  EventRequest,
  EventView,
  FleetOptions,
  JobView,
  PortfolioAccepted,
  PortfolioRequest,
  StreamToken,
  StreamTokenRequest,
  SupplierSettings,
  TimelinePage,
  UploadRequest,
  WaitOptions,
  WorkflowView,
} from "./client.js";
export { FleetError, FleetTimeoutError, type FleetErrorCode } from "./errors.js";
export { isBatchProgress, isJobEvent, JOB_AND_BATCH_TYPES } from "./events.js";
export type { BatchProgress, JobEventType, Progress, StreamEvent, TenantEvent } from "./events.js";
export { readEventStream, type ReadStreamOptions } from "./sse.js";
export { openEventStream, streamUrl, type EventSourceLike, type EventStream, type OpenEventStreamOptions } from "./browser.js";
export type { components, operations, paths } from "./schema.js";
