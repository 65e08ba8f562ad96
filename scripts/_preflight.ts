/**
 * What the root benchmarks check before they create anything: Linux, root, and the Debian
 * tools they run, each missing one named with the package that brings it.
 *
 * @module
 */

function onPath(program: string): boolean {
  for (const dir of (Deno.env.get("PATH") ?? "/usr/sbin:/usr/bin:/sbin:/bin").split(":")) {
    try {
      if (Deno.statSync(`${dir}/${program}`).isFile) return true;
    } catch { /* not here */ }
  }
  return false;
}

/** Exits 2, with one line per problem prefixed by `tag`, unless every check passes. */
export function checkPreconditions(tag: string, tools: readonly [string, string][]): void {
  const problems: string[] = [];
  for (const [tool, pkg] of tools) {
    if (!onPath(tool)) problems.push(`${tool} is missing: apt-get install ${pkg}`);
  }
  if (Deno.build.os !== "linux") problems.push("the benchmark needs Linux");
  else if (Deno.uid() !== 0) problems.push("the benchmark needs root: run it with sudo");
  if (problems.length > 0) {
    for (const problem of problems) console.error(`${tag}: ${problem}`);
    Deno.exit(2);
  }
}
