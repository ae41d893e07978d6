// Runs the TF.js BlazeFace graph model (pure-JS backend) on N x 256 x 256 x 3 float32 inputs
// read from a raw file; writes the four outputs, raw float32, one file each.
const tf = require("@tensorflow/tfjs");
const fs = require("fs");
const path = require("path");
const [modelJson, inputFile, count, outPrefix] = process.argv.slice(2);
const handler = {
  load: async () => {
    const graph = JSON.parse(fs.readFileSync(modelJson));
    const group = graph.weightsManifest[0];
    const buffers = group.paths.map((p) => fs.readFileSync(path.join(path.dirname(modelJson), p)));
    const data = Buffer.concat(buffers);
    return {modelTopology: graph.modelTopology, weightSpecs: group.weights,
            weightData: data.buffer.slice(data.byteOffset, data.byteOffset + data.length),
            format: graph.format, generatedBy: graph.generatedBy, convertedBy: graph.convertedBy};
  },
};
(async () => {
  await tf.setBackend("cpu");
  const model = await tf.loadGraphModel(handler);
  const raw = fs.readFileSync(inputFile);
  const all = new Float32Array(raw.buffer, raw.byteOffset, raw.length / 4);
  const n = parseInt(count);
  for (let i = 0; i < n; i++) {
    const x = tf.tensor4d(all.slice(i * 256 * 256 * 3, (i + 1) * 256 * 256 * 3), [1, 256, 256, 3]);
    const outputs = model.execute(x, ["Identity", "Identity_1", "Identity_2", "Identity_3"]);
    outputs.forEach((t, j) => {
      fs.writeFileSync(`${outPrefix}_${i}_${j}.bin`, Buffer.from(t.dataSync().buffer));
      console.log(i, j, t.shape.join("x"));
    });
  }
})();
