// Runs nsfwjs' MobileNetV2 (TF.js layers model, pure-JS backend) on N x 224 x 224 x 3 float32
// inputs from a raw file; writes one layer's output (default flatten_1, the pooled 1,280
// features), raw float32. tools/convert_nsfwjs_mobilenet.py --compare-tfjs runs it.
const tf = require("@tensorflow/tfjs");
const fs = require("fs");
const path = require("path");
const [folder, inputFile, count, outFile, layer] = process.argv.slice(2);
const model = require(path.resolve(folder, "model.min.js"));
const shard = require(path.resolve(folder, "group1-shard1of1.min.js"));
const handler = {
  load: async () => {
    const data = Buffer.from(shard, "base64");
    return {modelTopology: model.modelTopology, weightSpecs: model.weightsManifest[0].weights,
            weightData: data.buffer.slice(data.byteOffset, data.byteOffset + data.length)};
  },
};
(async () => {
  await tf.setBackend("cpu");
  const full = await tf.loadLayersModel(handler);
  const pooled = tf.model({inputs: full.inputs, outputs: full.getLayer(layer || "flatten_1").output});
  const raw = fs.readFileSync(inputFile);
  const n = parseInt(count);
  const x = tf.tensor4d(new Float32Array(raw.buffer, raw.byteOffset, raw.length / 4), [n, 224, 224, 3]);
  const y = pooled.predict(x);
  fs.writeFileSync(outFile, Buffer.from(y.dataSync().buffer));
  console.log(y.shape.join("x"));
})();
