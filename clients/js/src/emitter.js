// A small event emitter (the same in browsers and Node.js, no dependency on either's).

export class Emitter {
  #listeners = new Map();

  /**
   * Call `listener` on every `event`; returns a function that removes it.
   * @param {string} event @param {(value: any) => void} listener
   */
  on(event, listener) {
    let set = this.#listeners.get(event);
    if (!set) this.#listeners.set(event, (set = new Set()));
    set.add(listener);
    return () => this.off(event, listener);
  }

  /** Stop calling `listener` on `event`. */
  off(event, listener) {
    this.#listeners.get(event)?.delete(listener);
  }

  /** Call `listener` on the next `event` only. */
  once(event, listener) {
    const off = this.on(event, (value) => {
      off();
      listener(value);
    });
    return off;
  }

  /** Whether anything listens to `event`. */
  listens(event) {
    return (this.#listeners.get(event)?.size ?? 0) > 0;
  }

  /** Call the listeners of `event`; one that throws is reported and does not stop the others. */
  emit(event, value) {
    const set = this.#listeners.get(event);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(value);
      } catch (error) {
        reportListenerError(error);
      }
    }
  }
}

function reportListenerError(error) {
  // Thrown outside the client's own stack, so that it reaches window.onerror or Node's
  // uncaughtException as any other callback's error would, without breaking the client.
  setTimeout(() => {
    throw error;
  }, 0);
}
