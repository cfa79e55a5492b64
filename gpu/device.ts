/**
 * Opens a WebGPU device for the GPU training path.
 *
 * Deno ships WebGPU (wgpu underneath) as `navigator.gpu`. On a machine
 * without a GPU, Mesa's llvmpipe still gives a software adapter, through
 * OpenGL ES (EGL) or through Vulkan (lavapipe). It is slow but computes the
 * same results, so the tests run everywhere Mesa is installed. There is no
 * silent fallback to the CPU: without an adapter `requestGpu` throws.
 *
 * @example
 * ```ts
 * import { requestGpu } from "./device.ts";
 * const { device, adapterName } = await requestGpu();
 * console.log(`training on ${adapterName}`);
 * device.destroy();
 * ```
 *
 * @module
 */

/** An open WebGPU device and a readable name of the adapter behind it. */
export interface Gpu {
  /** The open device; its owner destroys it. */
  device: GPUDevice;
  /** Adapter description such as "llvmpipe (LLVM 15.0.6, 256 bits)" or the GPU's model name. */
  adapterName: string;
}

/** First words of the error that `requestGpu` throws when WebGPU is not usable. */
export const NO_ADAPTER_MESSAGE = "no WebGPU adapter was found";

/**
 * Limits the training path raises to what the adapter supports: large
 * activations need big storage bindings, and the kernels bind up to seven
 * storage buffers at once.
 */
const RAISED_LIMITS = [
  "maxBufferSize",
  "maxStorageBufferBindingSize",
  "maxStorageBuffersPerShaderStage",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupsPerDimension",
] as const;

/**
 * Requests the high-performance adapter and opens a device on it with the
 * adapter's maximum buffer limits.
 *
 * @throws Error starting with "no WebGPU adapter was found" when
 * `navigator.gpu` is missing or no adapter is available.
 */
export async function requestGpu(): Promise<Gpu> {
  const gpu = (globalThis.navigator as Navigator | undefined)?.gpu;
  if (gpu === undefined) {
    throw new Error(
      `${NO_ADAPTER_MESSAGE}: navigator.gpu is missing in this runtime; ` +
        "run with Deno 2 or later, which provides WebGPU without flags",
    );
  }

  const adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
  if (adapter === null) {
    throw new Error(
      `${NO_ADAPTER_MESSAGE}: install a GPU driver with Vulkan, Metal or Direct3D 12 support, ` +
        "or Mesa's software renderer llvmpipe (Debian and Ubuntu packages libegl-mesa0 and " +
        "libgl1-mesa-dri, or mesa-vulkan-drivers)",
    );
  }

  const requiredLimits: Record<string, number> = {};
  for (const name of RAISED_LIMITS) requiredLimits[name] = adapter.limits[name];
  const device = await adapter.requestDevice({ requiredLimits });

  device.lost.then((info) => {
    if (info.reason !== "destroyed") {
      console.error(`WebGPU device lost (${info.reason}): ${info.message}`);
    }
  });

  return { device, adapterName: describeAdapter(adapter.info) };
}

/** Returns the most specific name the adapter reports. */
function describeAdapter(info: GPUAdapterInfo): string {
  const parts = [info.description, info.device, info.architecture, info.vendor];
  const name = parts.find((part) => part !== undefined && part !== "" && part !== "0");
  return name ?? "unnamed WebGPU adapter";
}
