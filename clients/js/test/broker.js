// Starts real brokers (and a real redis-server) for the tests, on free ports.
// The broker command is $BROKER_COMMAND, else the repository's .venv/bin/broker.

import { spawn } from "node:child_process";
import { once } from "node:events";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const BROKER = process.env.BROKER_COMMAND ?? path.join(REPO, ".venv/bin/broker");
export const TIMEOUT = 15_000;

export async function freePort() {
  const server = net.createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address();
  server.close();
  await once(server, "close");
  return port;
}

/** Poll `condition` until it holds (for state that offers no event: another process). */
export async function waitUntil(condition, timeout = TIMEOUT, what = "condition") {
  const deadline = Date.now() + timeout;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** `promise`, or a rejection after `timeout` ms. */
export function within(promise, timeout, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), timeout);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Wait for the next `event` of a client or subscription, within `timeout`. */
export function nextEvent(emitter, event, timeout = TIMEOUT) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no ${event} event within ${timeout} ms`));
    }, timeout);
    const off = emitter.once(event, (value) => {
      clearTimeout(timer);
      resolve(value);
    });
  });
}

/** A broker process: `env` holds BROKER_* overrides. */
export class BrokerProcess {
  constructor(env = {}, port = null) {
    this.env = env;
    this.port = port;
    this.child = null;
    this.output = "";
  }

  get url() {
    return `ws://127.0.0.1:${this.port}/v1/ws`;
  }

  http(pathname) {
    return `http://127.0.0.1:${this.port}${pathname}`;
  }

  async start() {
    this.port ??= await freePort();
    this.child = spawn(BROKER, ["serve", "--host", "127.0.0.1", "--port", String(this.port)], {
      env: { ...process.env, BROKER_LOG__LEVEL: "warning", ...this.env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    // If the test process dies, its brokers go with it.
    const child = this.child;
    process.once("exit", () => child.kill("SIGKILL"));
    this.child.stdout.on("data", (chunk) => (this.output += chunk));
    this.child.stderr.on("data", (chunk) => (this.output += chunk));
    const exited = once(this.child, "exit");
    await waitUntil(
      async () => {
        if (this.child.exitCode !== null) {
          throw new Error(`the broker exited (${this.child.exitCode}): ${this.output}`);
        }
        try {
          return (await fetch(this.http("/readyz"))).ok;
        } catch {
          return false;
        }
      },
      TIMEOUT,
      "the broker to be ready",
    );
    this.exited = exited;
    return this;
  }

  /** SIGTERM (a graceful drain), and wait for the exit. */
  async stop() {
    if (!this.child || this.child.exitCode !== null) return;
    this.child.kill("SIGTERM");
    await this.exited;
  }

  async publish(channel, data) {
    const response = await fetch(this.http("/v1/publish"), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ channel, data }),
    });
    if (!response.ok) throw new Error(`publish: ${response.status} ${await response.text()}`);
    return await response.json();
  }

  async metric(name) {
    const text = await (await fetch(this.http("/metrics"))).text();
    const line = text.split("\n").find((l) => l.startsWith(name + " "));
    return line ? Number(line.split(" ")[1]) : 0;
  }
}

/** A private redis-server on a free port, or null when redis-server is not installed. */
export async function startRedis() {
  const port = await freePort();
  const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: "ignore",
  });
  process.once("exit", () => child.kill("SIGKILL"));
  const failed = await Promise.race([
    once(child, "error").then(() => true),
    waitUntil(
      () =>
        new Promise((resolve) => {
          const socket = net.connect(port, "127.0.0.1", () => {
            socket.destroy();
            resolve(true);
          });
          socket.on("error", () => resolve(false));
        }),
      TIMEOUT,
      "redis-server",
    ).then(() => false),
  ]);
  if (failed) return null;
  return {
    url: `redis://127.0.0.1:${port}/0`,
    async stop() {
      child.kill("SIGKILL");
      if (child.exitCode === null) await once(child, "exit");
    },
  };
}
