// The console's JSON API (same origin): the node's gRPC answers as proto3 JSON.

export class ApiError extends Error {
  constructor(status, message, reason) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.reason = reason ?? "";
  }
}

async function answer(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const error = body?.error ?? {};
    throw new ApiError(response.status, error.message ?? response.statusText, error.reason);
  }
  return body;
}

export async function getJson(path) {
  return answer(await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" }));
}

export async function postJson(path, body, token) {
  return answer(
    await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
      body: JSON.stringify(body),
      cache: "no-store",
    }),
  );
}
