// Runs a TF.js graph model (pure-JS backend) on float32 inputs from a raw file of the given
// shape (e.g. 2x224x224x3) and writes one node's output, raw float32.
// tools/convert_hse_faceres.py --compare-tfjs runs it.
const tf = require("@tensorflow/tfjs");
const fs = require("fs");
const path = require("path");
const [modelJson, inputFile, shape, output, outFile] = process.argv.slice(2);
const handler = {
  load: async () => {
    const graph = JSON.parse(fs.readFileSync(modelJson));
    const specs = [], buffers = [];
    for (const group of graph.weightsManifest) {
      specs.push(...group.weights);
      for (const p of group.paths) buffers.push(fs.readFileSync(path.join(path.dirname(modelJson), p)));
    }
    const data = Buffer.concat(buffers);
    return {modelTopology: graph.modelTopology, weightSpecs: specs, format: graph.format,
            weightData: data.buffer.slice(data.byteOffset, data.byteOffset + data.length)};
  },
};
(async () => {
  await tf.setBackend("cpu");
  const model = await tf.loadGraphModel(handler);
  const raw = fs.readFileSync(inputFile);
  const x = tf.tensor(new Float32Array(raw.buffer, raw.byteOffset, raw.length / 4), shape.split("x").map(Number));
  const y = model.execute(x, output);
  fs.writeFileSync(outFile, Buffer.from(y.dataSync().buffer));
  console.log(y.shape.join("x"));
})();
