// Reconnection delays: capped exponential backoff with full jitter (AWS Architecture Blog,
// "Exponential Backoff And Jitter", 2015): attempt n waits a uniform random time in
// [0, min(cap, base * factor ** n)] milliseconds.

export class Backoff {
  /**
   * @param {{base?: number, cap?: number, factor?: number, random?: () => number}} [options]
   *   `base`: upper bound of the first delay (ms, default 100); `cap`: largest delay (ms,
   *   default 10000); `factor`: growth per attempt (default 2).
   */
  constructor({ base = 100, cap = 10_000, factor = 2, random = Math.random } = {}) {
    if (!(base >= 0 && cap >= 0 && factor >= 1)) {
      throw new RangeError("Backoff needs base >= 0, cap >= 0 and factor >= 1");
    }
    this.base = base;
    this.cap = cap;
    this.factor = factor;
    this.random = random;
  }

  /** The largest delay attempt `attempt` (0 for the first) may get, in ms. */
  ceiling(attempt) {
    if (attempt > 64) return this.cap;
    return Math.min(this.cap, this.base * this.factor ** attempt);
  }

  /** A delay for attempt `attempt`, uniform in [0, ceiling(attempt)], in ms. */
  delay(attempt) {
    return this.random() * this.ceiling(attempt);
  }
}
