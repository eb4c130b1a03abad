// A client's flow through the types openapi-typescript generates from the
// OpenAPI document. No casts, no `any`: a type error here is a defect of the
// document, not of this file. scripts/client-check type-checks it with
// `tsc --strict --noEmit`, then runs it against a live server.
import createClient from "openapi-fetch";
import type { paths } from "scriptd-openapi";

/** The data of a successful answer, or an error naming the failed call. */
function ok<T>(what: string, r: { data?: T; error?: unknown; response: Response }): T {
  if (r.data === undefined) {
    throw new Error(`${what}: ${r.response.status} ${JSON.stringify(r.error)}`);
  }
  return r.data;
}

export async function flow(baseUrl: string): Promise<void> {
  const api = createClient<paths>({
    baseUrl,
    headers: { Authorization: "Bearer alice", "x-tenant-id": "acme" },
  });

  // A script, a version with a real graph, published.
  const slug = `flow-${Date.now()}`;
  const script = ok("create script", await api.POST("/scripts", { body: { name: "Flow", slug } }));
  const id = script.id;
  const version = ok("create version", await api.POST("/scripts/{id}/versions", {
    params: { path: { id } },
    body: { graphJson: { nodes: [{ id: "n1", type: "message" }], edges: [] } },
  }));
  ok("publish", await api.POST("/scripts/{id}/versions/{version}/publish", {
    params: { path: { id, version: version.version } },
    body: {},
  }));

  // The script shows its active version (an object, or null), graph included.
  const view = ok("get script", await api.GET("/scripts/{id}", { params: { path: { id } } }));
  const active = view.activeVersion;
  if (active === null) throw new Error("published, yet no active version");
  const nodes = active.graphJson.nodes;
  console.log(`script ${view.slug}: v${active.version} active, ${nodes.length} node(s)`);

  // A run with one variable of each type, finished.
  const started = ok("start run", await api.POST("/runs", { body: { scriptId: id } }));
  const runId = started.runId;
  const vars = ok("upsert vars", await api.POST("/runs/{runId}/vars", {
    params: { path: { runId } },
    body: [
      { key: "name", strVal: "Ana" },
      { key: "age", numVal: 42 },
      { key: "vip", boolVal: true },
      { key: "tags", jsonVal: ["new", "priority"] },
    ],
  }));
  const done = ok("finish run", await api.POST("/runs/{runId}/finish", {
    params: { path: { runId } },
    body: { status: "SUCCEEDED" },
  }));
  if (done.endedAt === null) throw new Error("finished, yet no endedAt");
  console.log(`run ${runId}: ${vars.upserted} vars, ${done.status} at ${done.endedAt.slice(11, 23)}`);

  // A command, then its status until the dev worker completed it.
  const accepted = ok("post command", await api.POST("/commands", {
    body: { command: "Contacts.UpsertAndLink.v1", actor: { userId: "u_1" } },
  }));
  const correlationId = accepted.correlationId;
  const deadline = Date.now() + 15_000;
  for (;;) {
    const cmd = ok("get command", await api.GET("/commands/{correlationId}", {
      params: { path: { correlationId } },
    }));
    const result = cmd.result;
    if (cmd.status === "COMPLETED" && result !== null) {
      const contacts = result.payload.contacts;
      if (!Array.isArray(contacts)) throw new Error("no contacts in the payload");
      console.log(`command ${correlationId}: ${result.event}, ${contacts.length} contact(s)`);
      return;
    }
    if (Date.now() > deadline) throw new Error(`command still ${cmd.status}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
