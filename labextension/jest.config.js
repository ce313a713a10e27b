/** Unit tests of the pure functions (src/logic.ts) and the runs poller's schedule (src/model.ts); the UI is
 * tested in a real browser (tests/browser/). */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/src'],
  testMatch: ['**/__tests__/**/*.spec.ts'],
  transform: {
    '^.+\\.ts$': ['ts-jest', { tsconfig: 'tsconfig.test.json' }]
  }
};
