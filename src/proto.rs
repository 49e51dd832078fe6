//! The generated gRPC types of `proto/wxauth/v1/wxauth.proto` and the file descriptor set
//! that server reflection serves.
#![allow(missing_docs)]

tonic::include_proto!("wxauth.v1");

/// The encoded `FileDescriptorSet` of the wxauth protos, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("wxauth_descriptor");
