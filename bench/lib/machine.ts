/** A description of the machine a bench ran on, for its JSON and Markdown output. */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism, cpus, freemem, loadavg, release, totalmem } from 'node:os';

export interface MachineDescription {
  cpuModel: string;
  /** Logical CPUs the OS reports. */
  cpus: number;
  /** What node may use (cgroup/affinity aware). */
  availableParallelism: number;
  /** Physical cores per socket and sockets, from /proc/cpuinfo where given. */
  coresPerSocket: number | null;
  /** The SIMD features that matter to onnxruntime's and llama.cpp's kernels. */
  simd: string[];
  memTotalBytes: number;
  memFreeBytesAtStart: number;
  loadAvg1m: number;
  platform: string;
  kernel: string;
  node: string;
  onnxruntimeNode: string | null;
  timestamp: string;
}

const SIMD = ['avx2', 'fma', 'f16c', 'avx512f', 'avx512bw', 'avx512vl', 'avx512_vnni', 'avx_vnni', 'avx512_bf16', 'avx512_fp16', 'amx_int8', 'neon', 'asimddp'];

function cpuinfo(): Map<string, string> {
  const m = new Map<string, string>();
  try {
    for (const line of readFileSync('/proc/cpuinfo', 'utf8').split('\n')) {
      const i = line.indexOf(':');
      if (i < 0) continue;
      const k = line.slice(0, i).trim();
      if (!m.has(k)) m.set(k, line.slice(i + 1).trim());
    }
  } catch {
    // Not Linux: fall back to os.cpus().
  }
  return m;
}

/** Version of an installed package, without importing it. */
export function packageVersion(name: string): string | null {
  try {
    const req = createRequire(import.meta.url);
    return (JSON.parse(readFileSync(req.resolve(`${name}/package.json`), 'utf8')) as { version: string }).version;
  } catch {
    return null;
  }
}

export function describeMachine(): MachineDescription {
  const info = cpuinfo();
  const flags = new Set((info.get('flags') ?? info.get('Features') ?? '').split(/\s+/));
  const cores = Number(info.get('cpu cores'));
  return {
    cpuModel: info.get('model name') ?? cpus()[0]?.model ?? 'unknown',
    cpus: cpus().length,
    availableParallelism: availableParallelism(),
    coresPerSocket: Number.isFinite(cores) ? cores : null,
    simd: SIMD.filter((f) => flags.has(f)),
    memTotalBytes: totalmem(),
    memFreeBytesAtStart: freemem(),
    loadAvg1m: loadavg()[0],
    platform: `${process.platform}-${process.arch}`,
    kernel: release(),
    node: process.version,
    onnxruntimeNode: packageVersion('onnxruntime-node'),
    timestamp: new Date().toISOString(),
  };
}

export function machineMarkdown(m: MachineDescription): string {
  const gib = (b: number) => `${(b / 2 ** 30).toFixed(1)} GiB`;
  return [
    `Machine: ${m.cpuModel}, ${m.cpus} CPUs (${m.availableParallelism} usable), ${gib(m.memTotalBytes)} RAM (${gib(m.memFreeBytesAtStart)} free), load ${m.loadAvg1m.toFixed(2)}`,
    `SIMD: ${m.simd.join(' ') || 'none detected'}; ${m.platform} ${m.kernel}; node ${m.node}; onnxruntime-node ${m.onnxruntimeNode ?? '?'}; ${m.timestamp}`,
  ].join('\n');
}
