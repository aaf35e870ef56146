// The agent's logic without host calls, so that `node --test` can test it.

/** The answer to `input`, given the greeting and the ring. */
export function answer(greeting, input, ring) {
  const name = input.trim() || "world";
  return `${greeting}, ${name}! (ring ${ring})`;
}
