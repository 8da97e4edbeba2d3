/**
 * Fast NHWC conv gradients for the wasm backend (placeholder; implemented in the foundation issue).
 */
export const registerWasmConvGradients = (): void => {}
