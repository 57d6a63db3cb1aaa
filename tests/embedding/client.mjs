// A JavaScript client of a nest_rt bundle: what an application embedding the models does.
//
// It reads only the bundle's files: bundle.json (which graphs a model has), each graph's JSON
// sidecar (its "contract": what feeds every input, the recommended batch, how the output splits
// into named arrays), the .npy files the contract names, and the graphs themselves, run with
// onnxruntime-node. No Python, no nest_rt.
//
//   node client.mjs BUNDLE MODEL_ID SUBJECT VARIANT IMAGES.npy OUT_DIR [--self-contained]
//
// --self-contained runs the model's one-graph form (nest-rt export --self-contained): images in,
// responses out, no .npy inputs. The contract says so; the code below is the same.
//
// IMAGES.npy: uint8 [N, 3, S, S]. Writes OUT_DIR/<array>.npy (float32) for each of the model's
// output arrays (EEG: responses [N, 4, 63, 140]; fsaverage: lh and rh; fwRF: responses [N, V]),
// and prints one JSON line describing them.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import ort from "onnxruntime-node";

const NPY_TYPES = { "<f4": ["float32", Float32Array], "|u1": ["uint8", Uint8Array], "<f8": ["float64", Float64Array] };

// A .npy file (format 1.0-3.0, C order) as { dtype, shape, data }.
function readNpy(path) {
  const bytes = readFileSync(path);
  if (bytes.toString("latin1", 1, 6) !== "NUMPY") throw new Error(`${path} is not a .npy file`);
  const major = bytes[6];
  const headerLength = major === 1 ? bytes.readUInt16LE(8) : bytes.readUInt32LE(8);
  const start = major === 1 ? 10 : 12;
  const header = bytes.toString("latin1", start, start + headerLength);
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  if (/'fortran_order':\s*True/.test(header)) throw new Error(`${path}: Fortran order is not supported`);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(",").filter((s) => s.trim()).map(Number);
  const [dtype, ArrayType] = NPY_TYPES[descr] ?? [];
  if (!dtype) throw new Error(`${path}: dtype ${descr} is not supported`);
  const offset = start + headerLength;
  const copy = bytes.buffer.slice(bytes.byteOffset + offset, bytes.byteOffset + bytes.length);  // aligned
  return { dtype, shape, data: new ArrayType(copy) };
}

function writeNpy(path, shape, data) {
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${shape.join(", ")}${shape.length === 1 ? "," : ""}), }`;
  header += " ".repeat(63 - ((10 + header.length) % 64)) + "\n";  // total header a multiple of 64
  const prefix = Buffer.alloc(10);
  prefix.write("\x93NUMPY", 0, "latin1");
  prefix[6] = 1;
  prefix[7] = 0;
  prefix.writeUInt16LE(header.length, 8);
  writeFileSync(path, Buffer.concat([prefix, Buffer.from(header, "latin1"), Buffer.from(data.buffer, data.byteOffset, data.byteLength)]));
}

const product = (values) => values.reduce((a, b) => a * b, 1);

// Rows start..stop of a [rows, ...] tensor as a Tensor of the same type.
function rows(tensor, start, stop) {
  const width = product(tensor.dims.slice(1));
  return new ort.Tensor(tensor.type, tensor.data.subarray(start * width, stop * width), [stop - start, ...tensor.dims.slice(1)]);
}

// Run `graph` over `input` (a Tensor) in batches of `batch`; other inputs fixed. Returns the
// first output for all rows, as one Float32Array and its dims.
async function runBatched(session, inputName, input, others, batch) {
  const count = input.dims[0];
  const parts = [];
  let width = 0;
  for (let start = 0; start < count; start += batch) {
    const stop = Math.min(start + batch, count);
    const result = await session.run({ [inputName]: rows(input, start, stop), ...others });
    const output = result[session.outputNames[0]];
    width = product(output.dims.slice(1));
    parts.push(output.data);
  }
  const data = new Float32Array(count * width);
  let at = 0;
  for (const part of parts) {
    data.set(part, at);
    at += part.length;
  }
  return new ort.Tensor("float32", data, [count, width]);
}

async function main() {
  const [bundle, modelId, subject, variant, imagesPath, outDir, form] = process.argv.slice(2);
  const options = { intraOpNumThreads: 2, executionProviders: ["cpu"] };
  const manifest = JSON.parse(readFileSync(join(bundle, "bundle.json"), "utf8"));
  const split = manifest.models[modelId].graphs[subject][variant];
  const entry = form === "--self-contained" ? split.self_contained : split;
  if (!entry) throw new Error(`${modelId} subject ${subject} ${variant} has no self-contained graph in ${bundle}`);
  const contract = JSON.parse(readFileSync(join(bundle, entry.sidecar), "utf8")).contract;
  const images = readNpy(imagesPath);
  let current = new ort.Tensor("uint8", images.data, images.shape);

  const fixed = {};
  let imagesInput = null;
  for (const input of contract.inputs) {
    const source = input.source;
    if (source.kind === "npy_file") {
      const array = readNpy(join(bundle, source.path));
      fixed[input.name] = new ort.Tensor(array.dtype, array.data, array.shape);
    } else if (source.kind === "graph_output") {
      // first the graph that produces this input (the shared backbone), from the images
      const producerContract = JSON.parse(readFileSync(join(bundle, dirname(source.graph), "backbone.json"), "utf8")).contract;
      const producer = await ort.InferenceSession.create(join(bundle, source.graph), options);
      current = await runBatched(producer, "images", current, {}, producerContract.recommended_batch);
      imagesInput = input.name;
    } else {
      imagesInput = input.name;
    }
  }
  const session = await ort.InferenceSession.create(join(bundle, contract.graph), options);
  const flat = await runBatched(session, imagesInput, current, fixed, contract.recommended_batch);

  mkdirSync(outDir, { recursive: true });
  const count = flat.dims[0];
  const width = flat.dims[1];
  const written = [];
  for (const array of contract.outputs[0].arrays) {
    const [start, stop] = array.columns;
    const data = new Float32Array(count * (stop - start));
    for (let n = 0; n < count; n++) data.set(flat.data.subarray(n * width + start, n * width + stop), n * (stop - start));
    const shape = [count, ...array.shape.slice(1)];
    writeNpy(join(outDir, `${array.name}.npy`), shape, data);
    written.push({ name: array.name, shape, axes: array.axes.map((axis) => axis.name) });
  }
  console.log(JSON.stringify({ model: modelId, subject, variant, graph: contract.graph, onnxruntime: ort.env.versions?.common ?? null, arrays: written }));
}

main().catch((error) => {
  console.error(error.stack ?? String(error));
  process.exit(1);
});
