/**
 * JSON-schema helpers shared by the files latentwatch reads (daemon config, trial config, probe
 * files): schemas are written with TypeBox, so each file's TypeScript type is `Static<typeof Schema>`
 * of the very object ajv validates against.
 */
import { Ajv, type ErrorObject } from 'ajv';
import { Type, type TObject, type TObjectOptions, type TProperties, type TSchema } from 'typebox';

/** An object schema that refuses unknown keys (`additionalProperties: false`), so typos fail loudly. */
export function closedObject<P extends TProperties>(properties: P, options: TObjectOptions = {}): TObject<P> & { additionalProperties: false } {
  return Type.Object(properties, { ...options, additionalProperties: false }) as TObject<P> & { additionalProperties: false };
}

/** `T | null`. */
export function nullable<T extends TSchema>(schema: T) {
  return Type.Union([schema, Type.Null()]);
}

/**
 * A validator for `schema` that returns every problem (empty when valid), compiled on first use so
 * that importing a module costs nothing. Strict ajv: an unknown keyword is a bug in the schema.
 */
export function schemaValidator(schema: TSchema): (value: unknown) => ErrorObject[] {
  let validate: ReturnType<Ajv['compile']> | undefined;
  return (value) => {
    validate ??= new Ajv({ allErrors: true, strict: true, allowUnionTypes: true }).compile(schema);
    return validate(value) ? [] : [...(validate.errors ?? [])];
  };
}
